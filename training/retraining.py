"""The retraining policy: how much kept data has landed since the corpus the latest release was
trained on, and whether that is enough to retrain (`RetrainingPolicy`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from training.config import KilnConfig, RetrainingPolicy
from training.data.clean import lineage
from training.curriculum.schedule import Pool
from training.fsutil import fingerprint, sha256_file
from training.layout import LINEAGE_JSON, TOKENIZER_JSON, latest


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
        "parts": sorted({(r["batch"], r["modality"]) for r in new}),
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


def starting_from(cfg: KilnConfig, start: str | None) -> KilnConfig:
    """`cfg` with its retraining starting from `start` (None: as it is); a retraining from a release
    also takes the release's tokenizer, so token ids mean what they meant to its weights."""
    policy = cfg.operation.retraining if start is None else replace(cfg.operation.retraining, start_from=start)
    tokenizer = replace(cfg.tokenizer, source="release") if policy.start_from == "release" else cfg.tokenizer
    return replace(cfg, operation=replace(cfg.operation, retraining=policy), tokenizer=tokenizer)


def start_tag(policy: RetrainingPolicy, release: str | None) -> str:
    """Where a retraining under `policy` starts, with `release` the latest: its runs' `kiln/start` tag."""
    if policy.start_from == "release":
        return f"release {release}" if release else "scratch (no release yet)"
    return "scratch"


class NotTheReleaseTokenizer(RuntimeError):
    """A retraining from a release must encode its records with that release's tokenizer."""


def retraining_pool(corpus_dir: Path, releases_dir: Path, tokenizer_json: Path, policy: RetrainingPolicy) -> Pool | None:
    """The stages' pool of a retraining under `policy`: None (every training record) from scratch or
    before the first release; from the latest release, the corpus parts it was not trained on and a
    replay share of the others, once the tokenizer is the release's own."""
    if policy.start_from != "release":
        return None
    new = new_since_release(corpus_dir, releases_dir)
    if new["release"] is None:
        return None
    released = releases_dir / new["release"] / TOKENIZER_JSON
    if not tokenizer_json.is_file() or sha256_file(tokenizer_json) != sha256_file(released):
        raise NotTheReleaseTokenizer(
            f"retraining.start_from is \"release\" but {tokenizer_json} is not release {new['release']}'s tokenizer: "
            "materialize tokenizer first (it copies the release's)"
        )
    return Pool(new["release"], tuple(map(tuple, new["parts"])), policy.replay_share)
