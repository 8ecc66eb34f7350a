"""Releases: `$KILN_DATA_DIR/releases/<version>/`, a Hugging Face model folder with its int8 variant,
model card and a manifest of every file's sha256; `releases/LATEST` names the newest.

A release is assembled in a hidden temporary folder and renamed into place only when complete; LATEST
is replaced (atomically) only after that. A crash at any point leaves the previous release and LATEST
as they were, and at worst a hidden `.<version>.tmp-<host>-<pid>-*` folder that the next packaging
removes once that process is gone (`fsutil.remove_dead_temps`: a packaging still running keeps its own).
Version names are `YYYYMMDD-HHMMSS-<first 8 hex of the weights' sha256>` (UTC): unique, and in time
order when sorted.

The release gate (`judge`, `release_blockers`) decides whether a candidate may be released at all.
`assemble_release` (training/release/assemble.py, the release asset's body) asks it before reading or
writing anything, and the asset checks `no_regression`, `quantization_within_bound` and
`gguf_matches_transformers` apply the same rules (`regression_gate`, `quantization_gate`, `gguf_gate`),
so a hand-run release, a run retry and the automation all meet one gate.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from training.fsutil import atomic_path, remove_dead_temps, sha256_file
from training.layout import LATEST, RELEASE_MANIFEST, archive_name, latest

WEIGHTS_SHA256 = "weights_sha256"
"""The key under which both record the sha256 of the base_model weights they measured."""


@dataclass(frozen=True)
class Gate:
    """One quality rule's verdict, and what it found either way (the asset check's description)."""

    passed: bool
    description: str


HARNESS_GROUP = "kiln"
"""The lm-evaluation-harness group (training/release/harness.py) whose bits per byte the regression gate compares."""


def _harness_bits_per_byte(run: dict | None) -> float | None:
    if not run:
        return None
    value = run.get("results", {}).get(HARNESS_GROUP, {}).get("bits_per_byte")
    return float(value) if value is not None else float("nan")


def regression_gate(evaluation: dict) -> Gate:
    """The candidate's held-out byte perplexity may exceed the previous release's (both measured in the
    same evaluation, on the same records) by at most the margin recorded beside it. Byte perplexity, so
    a retrained tokenizer cannot flatter the comparison. Where both carry lm-evaluation-harness results
    (`candidate["harness"]`, `previous["harness"]`), the harness's bits per byte over kiln's tasks may
    likewise exceed the previous release's by at most the margin; an evaluation.json from before the
    harness has none, and then the byte perplexity rule alone applies. Not a number fails: no comparison
    is no pass."""
    previous, margin = evaluation["previous"], evaluation["margin"]
    if previous is None:
        return Gate(True, "no previous release: nothing to regress from")
    change, version = previous["change"], previous["version"]
    if not math.isfinite(change):
        return Gate(
            False, f"byte perplexity change against release {version} is {change}, not a number to compare (margin {margin:.0%})"
        )
    verdict = "worse" if change > 0 else "better"
    passed = change <= margin
    description = f"byte perplexity {abs(change):.2%} {verdict} than release {version} (margin {margin:.0%})"
    new, old = _harness_bits_per_byte((evaluation.get("candidate") or {}).get("harness")), _harness_bits_per_byte(previous.get("harness"))
    if new is not None and old is not None:
        harness_change = new / old - 1 if old > 0 else float("nan")
        if not math.isfinite(harness_change):
            return Gate(False, f"{description}; harness bits per byte {new} against {old}, not a number to compare")
        verdict = "worse" if harness_change > 0 else "better"
        passed = passed and harness_change <= margin
        description += f"; harness bits per byte {abs(harness_change):.2%} {verdict}"
    return Gate(passed, description)


def quantization_gate(quantization: dict) -> Gate:
    """The int8 model's held-out perplexity may exceed the full model's by at most the bound recorded
    beside it."""
    change, bound = quantization["perplexity_change"], quantization["bound"]
    description = f"int8 perplexity {change:+.2%} against the full model (bound {bound:.0%})"
    return Gate(math.isfinite(change) and change <= bound, description)


def gguf_gate(record: dict) -> Gate:
    """Every GGUF file's llama.cpp next-token logits are within its tolerance of transformers' on the
    held-out prompts, and llama.cpp tokenizes every prompt as transformers does. Judged from the
    numbers, not a recorded verdict; no file, or not a number, fails."""
    files = record["files"]
    if not files:
        return Gate(False, "no GGUF file was checked")
    verdicts = []
    for name, entry in sorted(files.items()):
        c = entry["comparison"]
        diff, tolerance, mismatches = float(c["max_abs_diff"]), float(c["tolerance"]), c["tokenization_mismatches"]
        verdicts.append((math.isfinite(diff) and diff <= tolerance and not mismatches, (
            f"{name}: llama.cpp logits within {diff:.2g} of transformers (tolerance {tolerance:g}), top-1 "
            f"{c['top1_agreement']:.2%}, tokenization agrees on {c['tokenization_agrees']}/{c['prompts']} prompts"
        )))
    passed = all(ok for ok, _ in verdicts)
    # A failure names only the files that failed; a pass, every file.
    return Gate(passed, "; ".join(d for ok, d in verdicts if passed or not ok))


MAX_RECORD_BYTES = 16 << 20
"""Largest evaluation.json, quantization.json or gguf.json the gate reads: kiln writes a few KB."""
EVALUATION, QUANTIZATION, GGUF = "evaluation", "quantized_model", "gguf_model"
"""The assets whose records the gate reads (Judged.records' keys)."""


@dataclass(frozen=True)
class Judged:
    """The release gate's verdict and what it was reached on: packaging uses these very records (the
    bytes the gate read) and weights hash, never a second read of files that may have changed since."""

    blockers: list[str]
    """Why the weights may not be released; empty: they may."""
    weights_sha256: str | None
    records: dict[str, bytes]
    """EVALUATION, QUANTIZATION, GGUF -> the record's bytes as the gate read them (those it could read)."""

    def record(self, asset: str) -> dict:
        return json.loads(self.records[asset])


def _read_record(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read(MAX_RECORD_BYTES + 1)
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes, not a record kiln writes")
    return raw


def judge(evaluation: Path, quantization: Path, weights: Path, gguf: Path) -> Judged:
    """Whether the base_model `weights` may be released, given the evaluation's evaluation.json, the
    int8 variant's quantization.json and the GGUF files' gguf.json: each measurement must exist, be of
    these very weights (a stale one says nothing about them) and pass its gate; the int8 record must
    name the sha256 of each int8 file it measured (the GGUF record always does), so that packaging can
    pin them."""
    if not weights.is_file():
        return Judged([f"{weights.name} is missing ({weights}): materialize base_model first"], None, {})
    current = sha256_file(weights)
    reasons, records = [], {}
    gates = ((evaluation, EVALUATION, regression_gate), (quantization, QUANTIZATION, quantization_gate), (gguf, GGUF, gguf_gate))
    for path, asset, gate in gates:
        if not path.is_file():
            reasons.append(f"{path.name} is missing ({path}): materialize {asset} first")
            continue
        try:
            raw = _read_record(path)
            measured = json.loads(raw)
            measured_sha, verdict = measured.get(WEIGHTS_SHA256), gate(measured)
            if asset == QUANTIZATION and not isinstance(measured.get("files"), dict):
                raise KeyError("files")  # written before kiln pinned the int8 files
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # half a file, or one from before these fields
            reasons.append(f"{path.name} is unreadable ({type(e).__name__}: {e}): materialize {asset} again")
            continue
        records[asset] = raw
        if measured_sha != current:
            of = f"weights {str(measured_sha)[:8]}" if measured_sha else "unrecorded weights"
            reasons.append(f"{path.name} is of {of}, base_model is {current[:8]}: materialize {asset} first")
        elif not verdict.passed:
            reasons.append(verdict.description)
    return Judged(reasons, current, records)


def release_blockers(evaluation: Path, quantization: Path, weights: Path, gguf: Path) -> list[str]:
    """`judge`'s reasons alone. Empty: the weights may be released."""
    return judge(evaluation, quantization, weights, gguf).blockers


def version_name(weights_sha256: str, now: datetime | None = None) -> str:
    """`<UTC time>-<the weights' sha256, 8 digits>`: from the digest the gate already computed."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{weights_sha256[:8]}"


def file_manifest(root: Path) -> dict[str, dict]:
    return {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        # __pycache__: Python's bytecode of eval_tasks/' loader, written when someone runs the tasks in place.
        if p.is_file() and p.name != RELEASE_MANIFEST and "__pycache__" not in p.relative_to(root).parts
    }


def verify(release: Path) -> list[str]:
    """Problems found: files missing, changed or not listed. Empty when the release is intact."""
    listed = json.loads((release / RELEASE_MANIFEST).read_text())["files"]
    actual = file_manifest(release)
    problems = [f"missing: {name}" for name in listed if name not in actual]
    problems += [f"not in the manifest: {name}" for name in actual if name not in listed]
    problems += [
        f"sha256 mismatch: {name}" for name, entry in listed.items()
        if name in actual and actual[name]["sha256"] != entry["sha256"]
    ]
    return problems


def write_release(
    releases: Path,
    version: str,
    folders: dict[str, Path],
    texts: dict[str, str],
    archive: bool = True,
    expect_sha256: dict[str, str] | None = None,
) -> Path:
    """Copy each folder's files (`""` for the release root, or a subfolder name) and write `texts`
    (relative path -> content), then the manifest; publish by rename, then point LATEST at it.
    `expect_sha256` (relative path -> sha256) is checked on the copies before publication: weights
    replaced after the gate looked at them are not released under the gate's verdict."""
    releases.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(releases)  # what packagings that died left; a running one's folder stays
    target = releases / version
    if target.exists():
        raise FileExistsError(f"release {version} exists already; versions are never overwritten")
    if (current := latest(releases)) is not None and current.name >= version:
        raise ValueError(f"version {version} does not sort after the latest release {current.name}")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        for sub, folder in folders.items():
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            for f in sorted(folder.iterdir()):
                if f.is_file():
                    shutil.copy2(f, tmp / sub / f.name)
        for name, content in texts.items():
            (tmp / name).write_text(content)
        files = file_manifest(tmp)
        for name, digest in (expect_sha256 or {}).items():
            if files.get(name, {}).get("sha256") != digest:
                raise ValueError(f"{name} changed while it was packaged (expected sha256 {digest[:8]}): not released")
        (tmp / RELEASE_MANIFEST).write_text(json.dumps({"version": version, "files": files}, indent=2, sort_keys=True) + "\n")
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
    if archive:
        write_archive(target)
    with atomic_path(releases / LATEST) as tmp:
        tmp.write_text(version + "\n")
    return target


class _Hashing:
    """A file being written that hashes what it is given: the archive is written and hashed in one pass."""

    def __init__(self, f):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()


def write_archive(release: Path) -> Path:
    """<version>.tar beside the release, and its sha256 in <version>.tar.sha256, both streamed in
    bounded buffers (a release at GPU scale is several GB). Not compressed: weights barely compress.
    Measured on a gpu-124m-sized release (bench/release.py: 2.2 GB of float32 safetensors, int8 and
    GGUF files at random initialization), gzip saved 7% (q8_0 GGUF 4%; 20% of bfloat16 weights) at
    5-22 MB/s of one core: minutes of packaging for a few percent."""
    tarball = release.with_name(archive_name(release.name))
    with atomic_path(tarball) as tmp, open(tmp, "wb") as f:
        hashing = _Hashing(f)
        with tarfile.open(fileobj=hashing, mode="w") as tar:  # type: ignore[arg-type]
            tar.add(release, arcname=release.name)
        digest = hashing.sha256.hexdigest()
    with atomic_path(tarball.with_name(tarball.name + ".sha256")) as tmp:
        tmp.write_text(f"{digest}  {tarball.name}\n")
    return tarball
