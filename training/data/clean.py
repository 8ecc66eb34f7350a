"""Cleaning: every record of every ready batch is kept or rejected with a reason, incrementally.

    <corpus_dir>/<batch>/<modality>.parquet      kept records
    <corpus_dir>/<batch>/_manifest.json          per modality: cache key, counts by reason, timing
    <rejected_dir>/<batch>/<modality>.parquet    rejected records with `reason` and `detail`

A (batch, modality) is cleaned again only when its cache key changes. The key hashes the modality's
files, the filter config, the CLIP model (for pairs) and the key of the same modality in the batch
before: duplicates are judged against earlier batches, so a changed batch also invalidates the
batches after it, while a newly landed batch (the usual case) leaves every earlier one untouched.
Run by hand:  python -m training.data.clean <landing> <out dir>
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from training.config import CleaningConfig
from training.data.filters.base import Filter, Unique, content_key, id_key
from training.data.filters.code import TreeSitterParse
from training.data.filters.image import ClipScore, ImageDecode
from training.data.filters.text import text_filters
from training.data.landing import Batch, count_records, ready_batches
from training.data.readers import read_code, read_image_pairs, read_text
from training.data.records import MODALITIES, Record, RecordWriter
from training.fsutil import atomic_path, fingerprint, remove, write_json

# Bump when what a filter decides changes, so every cached batch is cleaned again.
LOGIC_VERSION = 1
MANIFEST = "_manifest.json"


@dataclass
class ModalityResult:
    batch: str
    modality: str
    key: str
    kept: int
    rejected: int
    reasons: dict[str, int]
    seconds: float
    cached: bool = False


@dataclass
class CleaningReport:
    results: list[ModalityResult] = field(default_factory=list)
    removed_batches: list[str] = field(default_factory=list)
    unrecognized_files: list[str] = field(default_factory=list)

    def by_modality(self) -> dict[str, dict]:
        """Kept and rejected counts by reason for each modality, over all batches."""
        out: dict[str, dict] = {}
        for r in self.results:
            m = out.setdefault(r.modality, {"kept": 0, "rejected": 0, "reasons": Counter()})
            m["kept"] += r.kept
            m["rejected"] += r.rejected
            m["reasons"].update(r.reasons)
        return out


def chunks(items: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_filters(records: Iterable[Record], filters: list[Filter], chunk_size: int, kept: RecordWriter, rejected: RecordWriter) -> Counter:
    """Pass records through the filters in chunks (the first rejecting filter wins) and stream them
    to the writers in input order. Returns the count of rejections by reason."""
    reasons: Counter = Counter()
    for chunk in chunks(records, chunk_size):
        pending = [r for r in chunk if r.reject is None]
        for f in filters:
            survivors = []
            for rec, verdict in zip(pending, f(pending), strict=True):
                if verdict is None:
                    survivors.append(rec)
                else:
                    rec.reject = verdict
            pending = survivors
        kept.write([r for r in chunk if r.reject is None])
        bad = [r for r in chunk if r.reject is not None]
        rejected.write(bad)
        reasons.update(r.reject.reason for r in bad)  # type: ignore[union-attr]
    return reasons


class _Dedup:
    """The uniqueness filters of one modality, carried across batches in landing order. Keys of
    cached batches are loaded only when a later batch of the modality has to be cleaned."""

    def __init__(self, modality: str, corpus_dir: Path):
        self.corpus_dir = corpus_dir
        self.filters = [Unique("unique_id", id_key, "duplicate_id")]
        if modality != "image_text":  # identical captions of different images are not duplicates
            self.filters.insert(0, Unique("dedup", content_key, "duplicate"))
        self.modality = modality
        self.unloaded: list[str] = []

    def load_cached(self) -> None:
        for batch in self.unloaded:
            table = pq.read_table(self.corpus_dir / batch / f"{self.modality}.parquet", columns=["id", "source", "text"])
            for row in table.to_pylist():
                rec = Record(row["id"], self.modality, row["source"], text=row["text"])
                for f in self.filters:
                    f.first.setdefault(f.key(rec), rec.source)  # type: ignore[attr-defined]
        self.unloaded.clear()


def _filters(modality: str, cfg: CleaningConfig, score: Callable) -> list[Filter]:
    if modality == "text":
        return text_filters(cfg.text)
    workers = cfg.workers or os.cpu_count() or 1
    if modality == "code":
        return [TreeSitterParse(workers)]
    return [
        ImageDecode(cfg.image.max_image_bytes, cfg.image.max_image_pixels, workers),
        ClipScore(score, cfg.image.clip_threshold, cfg.image.batch_size),
    ]


def _read(modality: str, batch: Batch, cfg: CleaningConfig) -> Iterator[Record]:
    if modality == "text":
        return read_text(batch, cfg.text)
    if modality == "code":
        return read_code(batch, cfg.code)
    return read_image_pairs(batch, cfg.image)


def clean_landing(
    landing: Path,
    corpus_dir: Path,
    rejected_dir: Path,
    cfg: CleaningConfig,
    clip_fingerprint: str = "",
    clip_scorer: Callable[[], Callable] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> CleaningReport:
    """Clean every ready batch of `landing` that is new or changed; drop outputs of batches that
    left the landing zone. `clip_scorer()` returns the pair-scoring function and is only called if
    some batch's pairs have to be scored."""
    batches = ready_batches(landing)
    report = CleaningReport()
    names = {b.name for b in batches}
    for root in (corpus_dir, rejected_dir):
        root.mkdir(parents=True, exist_ok=True)
        for old in sorted(root.iterdir()):
            if old.is_dir() and old.name[0] not in "._" and old.name not in names:
                remove(old)
                if root == corpus_dir:
                    report.removed_batches.append(old.name)
    loaded: list[Callable] = []

    def score(images: list, captions: list[str]):  # loads the CLIP on the first pair to score
        if not loaded:
            if clip_scorer is None:
                raise ValueError("image-caption pairs need a CLIP model to be scored; none was configured")
            loaded.append(clip_scorer())
        return loaded[0](images, captions)

    modality_cfg = {"text": cfg.text, "code": cfg.code, "image_text": (cfg.image, clip_fingerprint)}
    for modality in MODALITIES:
        dedup = _Dedup(modality, corpus_dir)
        previous = ""
        for batch in batches:
            key = fingerprint(LOGIC_VERSION, modality, modality_cfg[modality], batch.fingerprint(modality), previous)
            previous = key
            manifest_path = corpus_dir / batch.name / MANIFEST
            manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
            entry = manifest.get("modalities", {}).get(modality)
            if entry and entry["key"] == key:
                report.results.append(ModalityResult(batch.name, modality, cached=True, **entry))
                dedup.unloaded.append(batch.name)
                continue
            dedup.load_cached()
            log(f"cleaning {batch.name}/{modality}")
            start = time.perf_counter()
            filters = _filters(modality, cfg, score) + dedup.filters
            with (
                atomic_path(corpus_dir / batch.name / f"{modality}.parquet") as kept_tmp,
                atomic_path(rejected_dir / batch.name / f"{modality}.parquet") as rej_tmp,
            ):
                kept, rejected = RecordWriter(kept_tmp, rejected=False), RecordWriter(rej_tmp, rejected=True)
                try:
                    reasons = run_filters(_read(modality, batch, cfg), filters, cfg.chunk_size, kept, rejected)
                finally:
                    kept.close()
                    rejected.close()
            result = ModalityResult(
                batch.name, modality, key, kept.rows, rejected.rows, dict(sorted(reasons.items())), round(time.perf_counter() - start, 3)
            )
            report.results.append(result)
            entry = {k: v for k, v in asdict(result).items() if k not in ("batch", "modality", "cached")}
            manifest.setdefault("modalities", {})[modality] = entry
            manifest.setdefault("content_sha256", {})[modality] = batch.fingerprint(modality)
            manifest["unrecognized_files"] = [str(p.relative_to(landing)) for p in batch.unrecognized_files()]
            write_json(manifest_path, manifest)
    for batch in batches:
        manifest_path = corpus_dir / batch.name / MANIFEST
        report.unrecognized_files += json.loads(manifest_path.read_text()).get("unrecognized_files", [])
    return report


@dataclass
class AccountingRow:
    batch: str
    modality: str
    records_in: int
    kept: int
    rejected: int

    @property
    def ok(self) -> bool:
        return self.records_in == self.kept + self.rejected


def verify_accounting(landing: Path, corpus_dir: Path, rejected_dir: Path, cfg: CleaningConfig) -> list[AccountingRow]:
    """Records in (counted from the landing zone, independently of the readers) against the rows
    actually in the kept and rejected files, per batch and modality."""

    def rows(path: Path) -> int:
        return pq.read_metadata(path).num_rows if path.is_file() else 0

    return [
        AccountingRow(
            b.name,
            m,
            count_records(b, m, cfg.image.max_caption_bytes),
            rows(corpus_dir / b.name / f"{m}.parquet"),
            rows(rejected_dir / b.name / f"{m}.parquet"),
        )
        for b in ready_batches(landing)
        for m in MODALITIES
    ]


if __name__ == "__main__":
    from training.clip import ClipScorer, build_clip_model
    from training.config import ClipTrainConfig

    landing, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = CleaningConfig()
    clip = build_clip_model(landing, out / "clip_model", ClipTrainConfig(), config.image)
    rep = clean_landing(
        landing, out / "cleaned_corpus", out / "rejected", config, clip["fingerprint"],
        lambda: ClipScorer(clip["model"]).score, print,
    )
    print(json.dumps({m: {**v, "reasons": dict(v["reasons"])} for m, v in rep.by_modality().items()}, indent=2))


def lineage(corpus_dir: Path) -> list[dict]:
    """Per batch and modality: the landing files' content hash, kept and rejected counts, reasons."""
    rows = []
    for manifest_path in sorted(corpus_dir.glob(f"*/{MANIFEST}")):
        manifest = json.loads(manifest_path.read_text())
        for modality, entry in sorted(manifest.get("modalities", {}).items()):
            rows.append(
                {
                    "batch": manifest_path.parent.name,
                    "modality": modality,
                    "content_sha256": manifest.get("content_sha256", {}).get(modality),
                    "kept": entry["kept"],
                    "rejected": entry["rejected"],
                    "reasons": entry["reasons"],
                }
            )
    return rows
