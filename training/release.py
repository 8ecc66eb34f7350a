"""Releases: `$KILN_DATA_DIR/releases/<version>/`, a Hugging Face model folder with its int8 variant,
model card and a manifest of every file's sha256; `releases/LATEST` names the newest.

A release is assembled in a hidden temporary folder and renamed into place only when complete; LATEST
is replaced (atomically) only after that. A crash at any point leaves the previous release and LATEST
as they were, and at worst a hidden `.<version>.tmp-*` folder that the next packaging removes.
Version names are `YYYYMMDD-HHMMSS-<first 8 hex of the weights' sha256>` (UTC): unique, and in time
order when sorted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from datetime import datetime, timezone
from pathlib import Path

from training.fsutil import atomic_path, remove, sha256_file

MANIFEST = "manifest.json"
LATEST = "LATEST"


def version_name(weights: Path, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{sha256_file(weights)[:8]}"


def latest(releases: Path) -> Path | None:
    pointer = releases / LATEST
    if pointer.is_file() and (path := releases / pointer.read_text().strip()).is_dir():
        return path
    return None


def file_manifest(root: Path) -> dict[str, dict]:
    return {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def verify(release: Path) -> list[str]:
    """Problems found: files missing, changed or not listed. Empty when the release is intact."""
    listed = json.loads((release / MANIFEST).read_text())["files"]
    actual = file_manifest(release)
    problems = [f"missing: {name}" for name in listed if name not in actual]
    problems += [f"not in the manifest: {name}" for name in actual if name not in listed]
    problems += [
        f"sha256 mismatch: {name}" for name, entry in listed.items()
        if name in actual and actual[name]["sha256"] != entry["sha256"]
    ]
    return problems


def write_release(
    releases: Path, version: str, folders: dict[str, Path], texts: dict[str, str], archive: bool = True
) -> Path:
    """Copy each folder's files (`""` for the release root, or a subfolder name) and write `texts`
    (relative path -> content), then the manifest; publish by rename, then point LATEST at it."""
    releases.mkdir(parents=True, exist_ok=True)
    for stale in releases.glob(".*.tmp-*"):  # left by a packaging that died
        remove(stale)
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
        (tmp / MANIFEST).write_text(json.dumps({"version": version, "files": files}, indent=2, sort_keys=True) + "\n")
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
    if archive:
        write_archive(target)
    with atomic_path(releases / LATEST) as tmp:
        tmp.write_text(version + "\n")
    return target


def write_archive(release: Path) -> Path:
    """<version>.tar.gz beside the release, and its sha256 in <version>.tar.gz.sha256."""
    tarball = release.with_name(release.name + ".tar.gz")
    with atomic_path(tarball) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(release, arcname=release.name)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    with atomic_path(tarball.with_name(tarball.name + ".sha256")) as tmp:
        tmp.write_text(f"{digest}  {tarball.name}\n")
    return tarball
