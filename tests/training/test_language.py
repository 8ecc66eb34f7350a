"""Language identification: the chunked model against py3langid's own `classify`, the language of
each kept text record, the allow-list and the per-batch histogram."""

import json

import pytest
from py3langid.langid import MODEL_FILE, LanguageIdentifier

from tests.helpers import clean, rows, write_batch
from training.config import CleaningConfig, LanguageConfig
from training.data.filters.language import MACROLANGUAGE, UNDETERMINED, _prefix, language_model

PARAGRAPHS = {
    "en": [
        "The potter loads the kiln in the evening and raises the temperature slowly through the night, "
        "so that the water left in the clay escapes before the glaze begins to melt.",
        "Most of the work in training a language model happens before the first step: collecting text, "
        "removing duplicates and deciding which documents are worth learning from.",
    ],
    "de": [
        "Der Töpfer belädt den Brennofen am Abend und erhöht die Temperatur langsam über Nacht, damit das "
        "restliche Wasser aus dem Ton entweichen kann, bevor die Glasur zu schmelzen beginnt.",
        "Die meiste Arbeit beim Trainieren eines Sprachmodells geschieht vor dem ersten Schritt: Texte sammeln, "
        "Dubletten entfernen und entscheiden, welche Dokumente es wert sind, gelernt zu werden.",
    ],
    "fr": [
        "Le potier charge le four le soir et augmente lentement la température pendant la nuit, afin que "
        "l'eau restée dans l'argile s'échappe avant que l'émail ne commence à fondre.",
        "L'essentiel du travail d'entraînement d'un modèle de langue se fait avant la première étape : "
        "rassembler des textes, supprimer les doublons et choisir les documents qui valent la peine.",
    ],
    "es": [
        "El alfarero carga el horno por la tarde y sube la temperatura poco a poco durante la noche, para "
        "que el agua que queda en la arcilla salga antes de que el esmalte empiece a fundirse.",
        "La mayor parte del trabajo de entrenar un modelo de lenguaje ocurre antes del primer paso: reunir "
        "textos, quitar los duplicados y decidir qué documentos merecen la pena.",
    ],
    "zh": [
        "陶工在傍晚把坯体装进窑里，整夜慢慢升高温度，让黏土中残留的水分在釉料开始熔化之前散去。",
        "训练语言模型的大部分工作发生在第一步之前：收集文本、去除重复，并决定哪些文档值得学习。",
    ],
}
LABELLED = [(lang, text) for lang, texts in PARAGRAPHS.items() for text in texts]


@pytest.mark.parametrize("expected, text", LABELLED)
def test_each_paragraph_gets_its_iso_code(expected, text):
    [(code, probability)] = language_model().classify([text], 256)
    assert code == expected
    assert 0.5 < probability <= 1.0


@pytest.mark.parametrize("prefix_bytes", [32, 64, 256, 4096])
def test_the_chunked_model_is_py3langid_on_the_same_prefix(prefix_bytes):
    """The numpy/torch version agrees with py3langid's per-document loop, class for class, on
    documents of every length in one chunk (short ones stop reading while long ones go on)."""
    reference = LanguageIdentifier.from_model_file(MODEL_FILE)
    texts = [t for _, t in LABELLED] + ["Short one.", "ALL CAPS SHOUTING IN ENGLISH", "Ünïcödé ñame café", "x" * 5000]
    got = language_model().classify(texts, prefix_bytes)
    want = [reference.classify(_prefix(t, prefix_bytes))[0] for t in texts]
    assert [code for code, _ in got] == [MACROLANGUAGE.get(w, w) for w in want]


def test_only_the_prefix_is_read():
    german, english = PARAGRAPHS["de"][0], " ".join(PARAGRAPHS["en"] * 4)
    assert language_model().classify([german + " " + english], 128)[0][0] == "de"
    assert language_model().classify([german + " " + english], 4096)[0][0] == "en"


def test_a_document_without_features_is_undetermined():
    assert language_model().classify(["", "   "], 256) == [(UNDETERMINED, 0.0), (UNDETERMINED, 0.0)]
    assert language_model().classify([], 256) == []


def _landing(tmp_path):
    landing = tmp_path / "landing"
    write_batch(landing, "b1", [t for _, t in LABELLED] + ["buy now " * 40])
    return landing


def test_kept_rows_carry_their_language_and_the_manifest_counts_them(tmp_path):
    clean(_landing(tmp_path), tmp_path)
    kept = [r for r in rows(tmp_path / "kept") if r["modality"] == "text"]
    assert {r["text"]: r["language"] for r in kept} == {t: lang for lang, t in LABELLED}
    rejected = {r["source"]: r for r in rows(tmp_path / "rejected") if r["modality"] == "text"}
    assert rejected["b1/text/a.jsonl:11"]["reason"] == "entropy_low"
    assert rejected["b1/text/a.jsonl:11"]["language"] is None  # rejected before it reached the language filter
    manifest = json.loads((tmp_path / "batches" / "b1" / "_manifest.json").read_text())
    assert manifest["languages"]["text"] == {"de": 2, "en": 2, "es": 2, "fr": 2, "zh": 2}
    assert manifest["languages"]["code"] == {"python": 2}  # the grammar of each code file


def test_the_allow_list_rejects_other_languages_with_a_reason(tmp_path):
    cfg = CleaningConfig(language=LanguageConfig(allow=("en", "de")))
    report = clean(_landing(tmp_path), tmp_path, cfg)
    kept = [r for r in rows(tmp_path / "kept") if r["modality"] == "text"]
    assert sorted(r["language"] for r in kept) == ["de", "de", "en", "en"]
    refused = [r for r in rows(tmp_path / "rejected") if r["reason"] == "language_not_allowed"]
    assert sorted(r["language"] for r in refused) == ["es", "es", "fr", "fr", "zh", "zh"]
    for r in refused:
        code, probability = r["detail"].split()
        assert code == r["language"] and 0.5 < float(probability) <= 1.0
    [text] = [r for r in report.results if r.modality == "text"]
    assert text.reasons["language_not_allowed"] == 6
    assert text.languages == {"de": 2, "en": 2, "es": 2, "fr": 2, "zh": 2}  # kept and rejected alike


def test_language_settings_are_in_the_text_cache_key_only(tmp_path):
    landing = _landing(tmp_path)
    clean(landing, tmp_path)
    again = clean(landing, tmp_path, CleaningConfig(language=LanguageConfig(allow=("en",))))
    assert {r.modality for r in again.results if not r.cached} == {"text"}
    cached = clean(landing, tmp_path, CleaningConfig(language=LanguageConfig(allow=("en",))))
    [text] = [r for r in cached.results if r.modality == "text"]
    assert text.cached and text.languages == {"de": 2, "en": 2, "es": 2, "fr": 2, "zh": 2}


def test_identification_off_leaves_the_column_empty(tmp_path):
    clean(_landing(tmp_path), tmp_path, CleaningConfig(language=LanguageConfig(identify=False)))
    assert {r["language"] for r in rows(tmp_path / "kept") if r["modality"] == "text"} == {None}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"allow": ("EN",)}, "two-letter"),
        ({"allow": ("eng",)}, "two-letter"),
        ({"allow": ("en", "")}, "two-letter"),
        ({"allow": ("en",), "identify": False}, "identify"),
        ({"prefix_bytes": 0}, "prefix_bytes"),
    ],
)
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LanguageConfig(**kwargs)
