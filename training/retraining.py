"""The retraining policy: how much kept data has landed since the corpus the latest release was
trained on, and whether that is enough to retrain (`RetrainingPolicy`)."""

from __future__ import annotations

import json
from pathlib import Path

from training.config import RetrainingPolicy
from training.data.clean import lineage
from training.fsutil import fingerprint
from training.layout import LINEAGE_JSON, latest


def _key(row: dict) -> tuple:
    return (row["batch"], row["modality"], row.get("content_sha256"), row.get("clip"))


def new_since_release(corpus_dir: Path, releases_dir: Path) -> dict:
    """The corpus's (batch, modality) parts that the latest release was not trained on (new, changed
    or re-scored), with their kept bytes; `state` names this corpus so a retrain runs once per state."""
    release = latest(releases_dir)
    trained: set[tuple] = set()
    if release is not None and (release / LINEAGE_JSON).is_file():
        trained = {_key(r) for r in json.loads((release / LINEAGE_JSON).read_text())["batches"]}
    rows = lineage(corpus_dir)
    new = [r for r in rows if _key(r) not in trained]
    return {
        "release": release.name if release else None,
        "bytes": sum(r.get("kept_bytes", 0) for r in new),
        "batches": sorted({r["batch"] for r in new}),
        "state": fingerprint([_key(r) for r in rows])[:16],
    }


def retrain_reason(policy: RetrainingPolicy, new: dict) -> str | None:
    """Why the policy retrains now, or None."""
    if policy.min_new_kept_bytes is None or not new["batches"] or new["bytes"] < policy.min_new_kept_bytes:
        return None
    since = f"release {new['release']}" if new["release"] else "the start (no release yet)"
    return (
        f"{new['bytes']:,} new kept bytes since {since} (policy: {policy.min_new_kept_bytes:,}) "
        f"in {len(new['batches'])} batch(es): {', '.join(new['batches'][:5])}{' ...' if len(new['batches']) > 5 else ''}"
    )
