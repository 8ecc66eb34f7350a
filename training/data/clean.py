"""Cleaning, in the two steps kiln's assets run:

1. `clean_batch` (the partitioned `cleaned_batch` asset): every record of one landing batch is
   decoded and filtered on its own (entropy, Tree-sitter, CLIP, ...), kept or rejected with a reason.

       <batches_dir>/<batch>/<modality>.parquet     records that passed the batch's filters
       <batches_dir>/<batch>/_manifest.json         per modality: cache key, records in, counts by
                                                    reason; the content hashes; the CLIP that scored it
       <rejected_dir>/<batch>/<modality>.parquet    rejected records with `reason` and `detail`

   A batch depends on nothing but its own files, the filter config and (for pairs) the CLIP, so
   batches clean in any order, in parallel, one run (or Kubernetes pod) each. A modality whose cache
   key is unchanged is not cleaned again.

2. `build_corpus` (the unpartitioned `cleaned_corpus`): exact duplicates (content, then id) across
   the cleaned batches in batch order, the first occurrence kept; then, for text and code,
   near-duplicates (MinHash LSH over word shingles, `training/data/near_dup.py`).

       <corpus_dir>/<batch>/<modality>.parquet      kept records: what the curriculum reads
       <corpus_dir>/<batch>/_<modality>.keys.npy    their content and id hashes (128-bit) with their
                                                    rows, sorted (training/data/corpus_index.py)
       <corpus_dir>/<batch>/_<modality>.minhash.npy their MinHash signatures, row for row
       <corpus_dir>/<batch>/_<modality>.bands.npy   their LSH band keys (64-bit) with their rows, sorted
       <corpus_dir>/<batch>/_manifest.json          lineage: content hashes, CLIP, kept/rejected by reason
       <rejected_dir>/<batch>/<modality>.duplicates.parquet

   The key files are written atomically with the batch; a new batch is checked against the earlier
   batches' key files, a window of its records at a time (one block-wise pass over them per
   window), never against their records: an earlier batch's text is not read, and memory is the
   batch being deduplicated and a block, whatever the corpus. Only kept records count across
   batches (a record rejected for its id or as a near-duplicate does not make a later copy a
   duplicate); the detail names the first kept record's source, read from its row of the Parquet.

   Incremental: a (batch, modality) is deduplicated again only when its cleaned records, or those of
   a batch before it, changed, or a file of it is missing (a corpus from before the key files is
   deduplicated again once); landing a new batch (the usual case) touches nothing else.

Run by hand:  python -m training clean <landing> <out dir>
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.cache import key_of
from training.config import CleaningConfig, NearDupConfig
from training.data import corpus_index
from training.data.corpus_index import Reads, id_digest, words
from training.data.filters.base import Filter, Unique, Verdict, content_key, id_key
from training.data.filters.code import TreeSitterParse
from training.data.filters.image import ClipScore, ClipUnavailable, ImageDecode
from training.data.filters.language import LanguageId
from training.data.filters.pii import PersonalData
from training.data.filters.text import text_filters
from training.data.landing import Batch, count_records, ready_batches
from training.data.near_dup import NearDuplicates
from training.data.readers import read_code, read_image_pairs, read_text
from training.data.records import MODALITIES, Record, RecordWriter
from training.fsutil import atomic_path, remove, write_json
from training.layout import BATCH_MANIFEST, Layout, batch_folders, duplicates_file, exact_keys_file, records_file

# Bump when what a filter decides changes, so every cached batch is cleaned again. The keys are the cache
# rule's (training/cache.py) on this version, the modality, the settings and the batch's content hash.
LOGIC_VERSION = 5  # 5: shards, Parquet pairs and code rows; column mapping; the metadata column
# Bump when what the corpus step decides or persists changes, so every batch is deduplicated again
# (and not cleaned again). 2: earlier batches are matched through their key files (their kept
# records' keys only), which a corpus from before lacks.
CORPUS_VERSION = 2

ScoreFn = Callable[[list, list[str]], object]


@dataclass(frozen=True)
class Clip:
    """The CLIP that scores a batch's pairs: its version is recorded with every batch it scored."""

    version: str
    """Content fingerprint of the model: part of the pairs' cache key, and their lineage."""
    provenance: str
    load: Callable[[], ScoreFn]
    """Loads the model and returns its scoring function; called only if some pair is to be scored."""


@dataclass
class ModalityResult:
    batch: str
    modality: str
    key: str
    kept: int
    rejected: int
    reasons: dict[str, int]
    seconds: float
    records_in: int = 0
    cached: bool = False
    languages: dict[str, int] = field(default_factory=dict)
    """Records (kept or rejected) by `language`, most frequent first: ISO codes for text, grammars for code."""
    redactions: dict[str, int] = field(default_factory=dict)
    """Personal data redacted in the kept records, by type."""


@dataclass
class CleaningReport:
    results: list[ModalityResult] = field(default_factory=list)
    removed_batches: list[str] = field(default_factory=list)
    unrecognized_files: list[str] = field(default_factory=list)
    deduplicated: list[tuple[str, str]] = field(default_factory=list)
    """(batch, modality) pairs whose duplicates were judged again (not cached in the corpus)."""
    reads: dict[str, Reads] = field(default_factory=dict)
    """`CorpusReport.reads`: what the corpus step read of earlier batches."""

    def by_modality(self) -> dict[str, dict]:
        """Kept and rejected counts by reason for each modality, over all batches."""
        out: dict[str, dict] = {}
        for r in self.results:
            m = out.setdefault(r.modality, {"kept": 0, "rejected": 0, "reasons": Counter()})
            m["kept"] += r.kept
            m["rejected"] += r.rejected
            m["reasons"].update(r.reasons)
        return out


def chunks(items: Iterable[Record], size: int, image_bytes: int = 1 << 62) -> Iterator[list[Record]]:
    """Records in lists of `size`, a list ending early once its records hold `image_bytes` of
    encoded images (`Record.image_bytes`)."""
    chunk: list[Record] = []
    held = 0
    for item in items:
        chunk.append(item)
        held += len(item.image_bytes) if item.image_bytes is not None else 0
        if len(chunk) == size or held >= image_bytes:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def run_filters(
    records: Iterable[Record], filters: list[Filter], chunk_size: int, kept: RecordWriter, rejected: RecordWriter,
    chunk_image_bytes: int = 1 << 62,
) -> Counter:
    """Pass records through the filters in chunks (the first rejecting filter wins) and stream them
    to the writers in input order. Returns the count of rejections by reason."""
    reasons: Counter = Counter()
    for chunk in chunks(records, chunk_size, chunk_image_bytes):
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


def _write_filtered(
    records: Iterable[Record], filters: list[Filter], chunk_size: int, kept_path: Path, rejected_path: Path,
    chunk_image_bytes: int = 1 << 62,
) -> tuple[RecordWriter, RecordWriter, Counter]:
    """`run_filters` into two Parquet files that appear together, whole, or not at all."""
    with atomic_path(kept_path) as kept_tmp, atomic_path(rejected_path) as rej_tmp:
        kept, rejected = RecordWriter(kept_tmp, rejected=False), RecordWriter(rej_tmp, rejected=True)
        try:
            reasons = run_filters(records, filters, chunk_size, kept, rejected, chunk_image_bytes)
        finally:
            kept.close()
            rejected.close()
    return kept, rejected, reasons


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --- Step 1: one batch ------------------------------------------------------------------------------


def _filters(modality: str, cfg: CleaningConfig, clip: Clip | None, score: ScoreFn) -> list[Filter]:
    """The modality's filters, then its language (text), then personal data: last, so that what
    another filter decides is decided on the record as it landed, never on a placeholder."""
    filters = _modality_filters(modality, cfg, clip, score)
    if modality == "text" and cfg.language.identify:
        filters.append(LanguageId(cfg.language))
    if any(action != "keep" for action in cfg.personal_data.actions().values()):
        filters.append(PersonalData(cfg.personal_data))
    return filters


def _modality_filters(modality: str, cfg: CleaningConfig, clip: Clip | None, score: ScoreFn) -> list[Filter]:
    if modality == "text":
        return text_filters(cfg.text)
    workers = cfg.workers or os.cpu_count() or 1
    if modality == "code":
        return [TreeSitterParse(workers, cfg.code)]
    decode = ImageDecode(cfg.image.max_image_bytes, cfg.image.max_image_pixels, workers)
    if clip is None:
        return [decode, ClipUnavailable()]
    return [decode, ClipScore(score, cfg.image.clip_threshold, cfg.image.batch_size)]


def _read(modality: str, batch: Batch, cfg: CleaningConfig) -> Iterator[Record]:
    if modality == "text":
        return read_text(batch, cfg.text)
    if modality == "code":
        return read_code(batch, cfg.code)
    return read_image_pairs(batch, cfg.image)


def clean_batch(
    batch: Batch,
    batches_dir: Path,
    rejected_dir: Path,
    cfg: CleaningConfig,
    clip: Clip | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[ModalityResult]:
    """Clean every modality of one ready batch whose cache key changed. Pairs are scored by `clip`;
    without one, a decodable pair is rejected as `clip_unavailable` and scored when its batch is
    cleaned again with a CLIP (the pairs' cache key holds the CLIP's version)."""
    manifest_path = batches_dir / batch.name / BATCH_MANIFEST
    manifest = _read_json(manifest_path)
    loaded: list[ScoreFn] = []

    def score(images: list, captions: list[str]):  # loads the CLIP on the first pair to score
        if not loaded:
            loaded.append(clip.load())  # type: ignore[union-attr]
        return loaded[0](images, captions)

    clip_version = clip.version if clip else "none"
    unrecognized = [str(p.relative_to(batch.path.parent)) for p in batch.unrecognized_files()]
    results = []
    for modality in MODALITIES:
        content = batch.fingerprint(modality)
        settings = {
            "text": (cfg.text, cfg.language, cfg.personal_data),
            "code": (cfg.code, cfg.personal_data),
            "image_text": (cfg.image, cfg.personal_data, clip_version),
        }[modality]
        key = key_of(LOGIC_VERSION, modality, settings, content)
        entry = manifest.get("modalities", {}).get(modality)
        if entry and entry["key"] == key:
            histograms = {h: manifest.get(h, {}).get(modality, {}) for h in ("languages", "redactions")}
            results.append(ModalityResult(batch.name, modality, cached=True, **entry, **histograms))
            continue
        log(f"cleaning {batch.name}/{modality}")
        start = time.perf_counter()
        kept, rejected, reasons = _write_filtered(
            _read(modality, batch, cfg), _filters(modality, cfg, clip, score), cfg.chunk_size,
            batches_dir / batch.name / records_file(modality), rejected_dir / batch.name / records_file(modality),
            cfg.chunk_image_bytes,
        )
        result = ModalityResult(
            batch.name, modality, key, kept.rows, rejected.rows, dict(sorted(reasons.items())), round(time.perf_counter() - start, 3),
            records_in=count_records(batch, modality, cfg),
            languages=dict(sorted((kept.languages + rejected.languages).items(), key=lambda kv: (-kv[1], kv[0]))),
            redactions={t: n for t, n in (kept.redactions + rejected.redactions).items() if n},
        )
        results.append(result)
        per_batch = ("batch", "modality", "cached", "languages", "redactions")
        manifest.setdefault("modalities", {})[modality] = {k: v for k, v in asdict(result).items() if k not in per_batch}
        manifest.setdefault("languages", {})[modality] = result.languages
        manifest.setdefault("redactions", {})[modality] = result.redactions
        manifest.setdefault("content_sha256", {})[modality] = content
        if modality == "image_text":
            manifest["clip"] = {"version": clip_version, "provenance": clip.provenance if clip else "none: pairs not scored"}
        manifest["unrecognized_files"] = unrecognized
        write_json(manifest_path, manifest)
    return results


def cleaned_batches(batches_dir: Path, names: Iterable[str]) -> list[str]:
    """The batches among `names` whose every modality has been cleaned with every record accounted
    for (records in = kept + rejected), in order. A batch whose cleaning failed, or failed its
    accounting, stays out of the corpus whatever path runs it."""
    done = []
    for name in names:
        entries = _read_json(batches_dir / name / BATCH_MANIFEST).get("modalities", {})
        if all(m in entries and entries[m]["records_in"] == entries[m]["kept"] + entries[m]["rejected"] for m in MODALITIES):
            done.append(name)
    return done


def remove_batch(name: str, *roots: Path) -> bool:
    """Delete a batch's outputs under each root (a batch that left the landing zone)."""
    found = False
    for root in roots:
        if (root / name).exists():
            remove(root / name)
            found = True
    return found


def sweep_batches(keep: Iterable[str], batches_dir: Path, rejected_dir: Path) -> list[str]:
    """Remove the per-batch outputs of every batch not in `keep`: batches that left the landing zone,
    or whose partition run finished after they left. Returns their names."""
    stale = sorted((set(batch_folders(batches_dir)) | set(batch_folders(rejected_dir))) - set(keep))
    for name in stale:
        remove_batch(name, batches_dir, rejected_dir)
    return stale


def corpus_inputs(landing: Path, batches_dir: Path, rejected_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """(cleaned, pending, swept): the ready batches cleaned with every record accounted for, in batch
    order, which the corpus is built from; the ready ones not (yet); and the batches whose outputs
    were swept because they are no longer ready."""
    ready = [b.name for b in ready_batches(landing)]
    cleaned = cleaned_batches(batches_dir, ready)
    return cleaned, [n for n in ready if n not in cleaned], sweep_batches(ready, batches_dir, rejected_dir)


# --- Step 2: the corpus -----------------------------------------------------------------------------


@dataclass
class CorpusReport:
    results: list[ModalityResult] = field(default_factory=list)
    """Per (batch, modality): kept after deduplication, duplicates rejected."""
    removed_batches: list[str] = field(default_factory=list)
    reads: dict[str, Reads] = field(default_factory=dict)
    """Per modality: what deduplicating the new batches read of the earlier ones (key files, a few
    signatures and sources; no text)."""


class _KeptKeys(Filter):
    """Last in a modality's chain, so it sees what the corpus keeps: their exact keys (content hash
    unless the modality is pairs, id hash), row for row, for the batch's key file."""

    name = "kept_keys"

    def __init__(self, content: bool):
        self.content = content
        self.tables: list[np.ndarray] = []
        self.rows = 0

    def __call__(self, records: Sequence[Record]) -> list[Verdict]:
        rows = np.arange(self.rows, self.rows + len(records), dtype=np.uint64)[:, None]
        keys = [[content_key(r) for r in records]] if self.content else []
        keys.append([id_digest(r.id) for r in records])
        self.tables += [np.hstack((words(k), rows)) for k in keys]
        self.rows += len(records)
        return [None] * len(records)

    def take(self) -> np.ndarray:
        table = np.concatenate([np.zeros((0, 3), np.uint64), *self.tables])
        self.tables, self.rows = [], 0
        return table


class _Dedup:
    """The uniqueness filters of one modality, in batch order: exact duplicates (content, then id),
    then near-duplicates (`NearDuplicates`), then `_KeptKeys`. A batch is checked against the earlier
    ones through their key files (`training/data/corpus_index.py`: the exact keys here, the LSH keys
    in near_dup.py), never their records; within itself, against its own records so far."""

    def __init__(self, modality: str, corpus_dir: Path, near_dup: NearDupConfig):
        self.modality, self.corpus_dir = modality, corpus_dir
        self.reads = Reads()
        # Identical captions of different images are not duplicates: pairs have no content filter.
        self.content = Unique("dedup", content_key, "duplicate") if modality != "image_text" else None
        self.ids = Unique("unique_id", id_key, "duplicate_id")
        self.near = NearDuplicates(near_dup, modality, corpus_dir, self.reads) if near_dup.enabled and modality in near_dup.modalities else None
        self.kept = _KeptKeys(self.content is not None)
        self.filters: list[Filter] = [f for f in (self.content, self.ids, self.near, self.kept) if f is not None]
        self.earlier: list[str] = []

    @property
    def settings(self) -> tuple:
        """What the verdicts depend on besides the records: in the corpus cache key."""
        return self.near.settings if self.near else ()

    def keys_path(self, batch: str) -> Path:
        return self.corpus_dir / batch / exact_keys_file(self.modality)

    def cached(self, batch: str) -> bool:
        """The batch's outputs of this step are all there (its key files; signatures if near-dup is on)."""
        files = [self.keys_path(batch)] + ([self.near.path(batch), self.near.keys_path(batch)] if self.near else [])
        return all(f.is_file() for f in files)

    def add(self, batch: str) -> None:
        """A cached batch: later ones are checked against its key files."""
        self.earlier.append(batch)
        if self.near:
            self.near.add(batch)

    def records(self, cleaned: Path, chunk_size: int) -> Iterator[Record]:
        """A batch's cleaned records for the chain, read a window at a time when there are earlier
        batches: before a window goes down the chain, its records are matched against theirs, in one
        pass over their key files per window."""
        window = (WINDOW_ROWS, WINDOW_TEXT_BYTES) if self.earlier else (chunk_size, WINDOW_TEXT_BYTES)
        for part in _windows(cleaned, chunk_size, *window):
            records = [
                Record(
                    row["id"], self.modality, row["source"], text=row["text"], language=row["language"],
                    entropy=row["entropy"], clip_score=row["clip_score"], redactions=row.get("redactions"),
                    metadata=row.get("metadata"),
                )
                for row in part.to_pylist()
            ]
            if self.earlier:
                self._match_exact(records)
                if self.near:
                    self.near.match_earlier(records)
            yield from records

    @contextlib.contextmanager
    def deduplicating(self, batch: str) -> Iterator[None]:
        """Deduplicate one batch inside this block; its key files appear whole when the block ends
        without an error."""
        try:
            with atomic_path(self.keys_path(batch)) as tmp, self.near.writing(batch) if self.near else contextlib.nullcontext():
                yield
                corpus_index.save(tmp, self.kept.take())
        finally:
            for f in (self.content, self.ids):
                if f is not None:
                    f.first = {}
        self.earlier.append(batch)

    def _match_exact(self, records: list[Record]) -> None:
        """Seed the exact filters with the keys of these records that earlier batches kept, and the
        source of the record that kept each: it comes first, whatever this batch holds."""
        kinds = [(self.ids, [r.id for r in records], [id_digest(r.id) for r in records])]
        if self.content:
            digests = [content_key(r) for r in records]
            kinds.insert(0, (self.content, digests, digests))
        keys = [(f, k) for f, ks, _ in kinds for k in ks]
        queries = words([d for _, _, ds in kinds for d in ds])
        first: dict[int, tuple[int, int]] = {}  # query -> (earlier batch, kept row)
        for q, b, row in zip(*(a.tolist() for a in corpus_index.find([self.keys_path(n) for n in self.earlier], queries, self.reads))):
            first.setdefault(q, (b, row))  # in batch order: the earliest batch's
        for b in sorted({b for b, _ in first.values()}):
            qs = [q for q, (qb, _) in first.items() if qb == b]
            corpus = self.corpus_dir / self.earlier[b] / records_file(self.modality)
            for q, source in zip(qs, corpus_index.sources(corpus, np.array([first[q][1] for q in qs]), self.reads)):
                f, key = keys[q]
                f.first.setdefault(key, source)


WINDOW_ROWS = 65_536
WINDOW_TEXT_BYTES = 32 << 20
"""A window of a batch being deduplicated (`_Dedup.records`): each costs one pass over the earlier
batches' key files, and holds its records and their signatures in memory."""


def _windows(path: Path, chunk_size: int, rows: int, text_bytes: int) -> Iterator[pa.Table]:
    """A cleaned records file in windows of `rows` records or `text_bytes` of text, whichever comes first."""
    parts, n, size = [], 0, 0
    for part in pq.ParquetFile(path).iter_batches(batch_size=min(chunk_size, rows)):
        parts.append(part)
        n, size = n + part.num_rows, size + part.column("text").nbytes
        if n >= rows or size >= text_bytes:
            yield pa.Table.from_batches(parts)
            parts, n, size = [], 0, 0
    if parts:
        yield pa.Table.from_batches(parts)


def build_corpus(
    batches_dir: Path,
    names: list[str],
    corpus_dir: Path,
    rejected_dir: Path,
    chunk_size: int = 2048,
    log: Callable[[str], None] = lambda _: None,
    near_dup: NearDupConfig = NearDupConfig(),
) -> CorpusReport:
    """Deduplicate the cleaned batches `names` (in that order) into `corpus_dir`, exact duplicates
    then near-duplicates (`near_dup`); drop the corpus outputs of any other batch."""
    report = CorpusReport()
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for old in batch_folders(corpus_dir):
        if old not in names:
            remove(corpus_dir / old)
            for modality in MODALITIES:
                (rejected_dir / old / duplicates_file(modality)).unlink(missing_ok=True)
            report.removed_batches.append(old)
    batch_manifests = {n: _read_json(batches_dir / n / BATCH_MANIFEST) for n in names}
    for modality in MODALITIES:
        dedup = _Dedup(modality, corpus_dir, near_dup)
        report.reads[modality] = dedup.reads
        previous = ""
        for name in names:
            cleaned = batch_manifests[name]["modalities"][modality]
            key = key_of(LOGIC_VERSION, CORPUS_VERSION, modality, cleaned["key"], previous, *dedup.settings)
            previous = key
            manifest_path = corpus_dir / name / BATCH_MANIFEST
            manifest = _read_json(manifest_path)
            entry = manifest.get("modalities", {}).get(modality)
            if entry and entry["key"] == key and dedup.cached(name):
                report.results.append(ModalityResult(name, modality, key, entry["kept"], entry["duplicates"], entry["duplicate_reasons"], 0.0, cached=True))
                dedup.add(name)
                continue
            log(f"deduplicating {name}/{modality}")
            start = time.perf_counter()
            with dedup.deduplicating(name):
                writer, dup_writer, reasons = _write_filtered(
                    dedup.records(batches_dir / name / records_file(modality), chunk_size), dedup.filters, chunk_size,
                    corpus_dir / name / records_file(modality), rejected_dir / name / duplicates_file(modality),
                )
            kept, dups = writer.rows, dup_writer.rows
            result = ModalityResult(name, modality, key, kept, dups, dict(sorted(reasons.items())), round(time.perf_counter() - start, 3))
            report.results.append(result)
            all_reasons = Counter(cleaned["reasons"]) + reasons
            manifest.setdefault("modalities", {})[modality] = {
                "key": key,
                "records_in": cleaned["records_in"],
                "kept": kept,
                "kept_bytes": writer.text_bytes,
                "rejected": cleaned["rejected"] + dups,
                "reasons": dict(sorted(all_reasons.items())),
                "duplicates": dups,
                "duplicate_reasons": dict(sorted(reasons.items())),
            }
            for copied in ("content_sha256", "clip", "unrecognized_files"):
                if copied in batch_manifests[name]:
                    manifest[copied] = batch_manifests[name][copied]
            write_json(manifest_path, manifest)
    return report


# --- The whole landing zone at once (the command line, the benchmarks) ------------------------------


def clean_landing(
    landing: Path,
    corpus_dir: Path,
    rejected_dir: Path,
    cfg: CleaningConfig,
    clip: Clip | None = None,
    log: Callable[[str], None] = lambda _: None,
    batches_dir: Path | None = None,
) -> CleaningReport:
    """Both steps over every ready batch of `landing`, dropping the outputs of batches that left it.
    The per-batch outputs go to `batches_dir` (default: `cleaned_batch/` beside `corpus_dir`)."""
    batches_dir = batches_dir or Layout(corpus_dir.parent).cleaned_batch
    batches = ready_batches(landing)
    names = [b.name for b in batches]
    report = CleaningReport()
    sweep_batches(names, batches_dir, rejected_dir)
    for batch in batches:
        report.results += clean_batch(batch, batches_dir, rejected_dir, cfg, clip, log)
    corpus = build_corpus(batches_dir, names, corpus_dir, rejected_dir, cfg.chunk_size, log, cfg.near_dup)
    report.removed_batches, report.reads = corpus.removed_batches, corpus.reads
    report.deduplicated = [(r.batch, r.modality) for r in corpus.results if not r.cached]
    # Kept after deduplication; rejected by the batch's filters and as duplicates.
    dedup = {(r.batch, r.modality): r for r in corpus.results}
    for r in report.results:
        d = dedup[(r.batch, r.modality)]
        r.kept, r.rejected = d.kept, r.rejected + d.rejected
        r.reasons = dict(sorted((Counter(r.reasons) + Counter(d.reasons)).items()))
    for name in names:
        report.unrecognized_files += _read_json(batches_dir / name / BATCH_MANIFEST).get("unrecognized_files", [])
    return report


# --- Accounting -------------------------------------------------------------------------------------


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


def _rows(path: Path) -> int:
    return pq.read_metadata(path).num_rows if path.is_file() else 0


def verify_batch(batch: Batch, batches_dir: Path, rejected_dir: Path, cfg: CleaningConfig) -> list[AccountingRow]:
    """Records in one batch (counted from the landing zone, independently of the readers) against the
    rows actually in its kept and rejected files, per modality."""
    return [
        AccountingRow(
            batch.name, m, count_records(batch, m, cfg),
            _rows(batches_dir / batch.name / records_file(m)), _rows(rejected_dir / batch.name / records_file(m)),
        )
        for m in MODALITIES
    ]


def verify_corpus(batches_dir: Path, corpus_dir: Path, rejected_dir: Path) -> list[AccountingRow]:
    """Per batch of the corpus and modality: its cleaned records = kept in the corpus + rejected duplicates."""
    names = batch_folders(corpus_dir)
    return [
        AccountingRow(
            n, m, _rows(batches_dir / n / records_file(m)),
            _rows(corpus_dir / n / records_file(m)), _rows(rejected_dir / n / duplicates_file(m)),
        )
        for n in names
        for m in MODALITIES
    ]


def verify_accounting(landing: Path, batches_dir: Path, corpus_dir: Path, rejected_dir: Path, cfg: CleaningConfig) -> list[AccountingRow]:
    """End to end, per batch and modality: records in the landing zone = kept in the corpus + every
    rejection (by the batch's filters and as duplicates)."""
    rows = []
    for batch in ready_batches(landing):
        for row in verify_batch(batch, batches_dir, rejected_dir, cfg):
            dups = _rows(rejected_dir / batch.name / duplicates_file(row.modality))
            row.kept = _rows(corpus_dir / batch.name / records_file(row.modality))
            row.rejected += dups
            rows.append(row)
    return rows


def lineage(corpus_dir: Path) -> list[dict]:
    """Per batch and modality: the landing files' content hash, the CLIP that scored the pairs, kept
    and rejected counts, reasons."""
    rows = []
    for manifest_path in sorted(corpus_dir.glob(f"*/{BATCH_MANIFEST}")):
        manifest = json.loads(manifest_path.read_text())
        for modality, entry in sorted(manifest.get("modalities", {}).items()):
            row = {
                "batch": manifest_path.parent.name,
                "modality": modality,
                "content_sha256": manifest.get("content_sha256", {}).get(modality),
                "kept": entry["kept"],
                "kept_bytes": entry.get("kept_bytes", 0),
                "rejected": entry["rejected"],
                "reasons": entry["reasons"],
            }
            if modality == "image_text" and "clip" in manifest:
                row["clip"] = manifest["clip"]["version"]
            rows.append(row)
    return rows
