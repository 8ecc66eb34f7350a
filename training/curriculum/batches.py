"""Difficulty per landing batch: each batch's records are scored in a run of their own (a partition of
`difficulty_scores`; one pod per batch on Kubernetes), by the predictor the policy names
(`DifficultyConfig.predictor`), and each record once.

    difficulty_scores/<batch>/scores.parquet   the batch's scores (`score_difficulty`), _step.json beside
    difficulty_scores/_predictor.json          predictor "release" only: the release scoring this round

A batch's scores are *up to date* when the key recorded in its folder is the one it would be scored
under now: the hash of the batch's part of the cleaned corpus (its records' content hashes, from
cleaned_corpus/<batch>/_manifest.json), the predictor, the scoring config and the logic version. The
key is computed from small files, without loading a model, so the sensor that requests scoring, the
retraining sensor that waits for it and the curriculum that reads the scores agree on it. The
curriculum reads the scores only when every batch of the corpus is up to date, hence scored by one
predictor: it never mixes two. Within a batch, scoring again reuses every unchanged record's scores
(`score_batch`), so a batch whose corpus part lost or gained a few records scores only those.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from training.cache import key_of, reused
from training.config import DifficultyConfig
from training.curriculum.difficulty import STEP, VERSION, Persistence, Predictor, ReleasedModel, score_difficulty
from training.fsutil import fingerprint, write_json
from training.layout import BATCH_MANIFEST, PREDICTOR_JSON, SCORES, STEP_JSON, Layout, batch_folders, latest

PERSISTENCE = "persistence"
RELEASE = "release"


@dataclass(frozen=True)
class PredictorChoice:
    """The predictor scoring now."""

    id: str
    """In every batch's key: "persistence", "release:<version>" or "model:<folder>@<its files' stat>"."""
    path: Path | None = None
    """The model folder; None for persistence."""


def load_predictor(choice: PredictorChoice) -> Predictor:
    """The predictor itself (a model on the GPU when there is one): only a scoring run loads it."""
    return Persistence() if choice.path is None else ReleasedModel(str(choice.path))


def predictor_choice(layout: Layout, cfg: DifficultyConfig, now: datetime | None = None, advance: bool = False) -> PredictorChoice:
    """The predictor the policy names now. With "release", the round's release (difficulty_scores/_predictor.json,
    started on first use with the latest release, or persistence before one); `advance` (the difficulty
    sensor, `python -m pipelines.batches --difficulty`) starts a new round with the latest release when it
    is newer and `rescore_every_days` have passed. A round whose release was deleted ends at once."""
    if cfg.predictor == PERSISTENCE:
        return PredictorChoice(PERSISTENCE)
    if cfg.predictor != RELEASE:
        folder = Path(cfg.predictor).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ValueError(f"difficulty.predictor {cfg.predictor!r}: not a Hugging Face model folder (no config.json)")
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
        return PredictorChoice(f"model:{folder}@{fingerprint(files)[:16]}", folder)
    now = now or datetime.now(timezone.utc)
    path = layout.difficulty_scores / PREDICTOR_JSON
    state = json.loads(path.read_text()) if path.is_file() else None
    newest = latest(layout.releases)
    newest_name = newest.name if newest else None
    current = state["release"] if state else None
    due = state is None or (current is not None and not (layout.releases / current).is_dir()) or (
        advance and newest_name != current
        and now - datetime.fromisoformat(state["since"]) >= timedelta(days=cfg.rescore_every_days)
    )
    if due:
        state = {"release": newest_name, "since": now.isoformat(timespec="seconds")}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, state)
    if state["release"] is None:
        return PredictorChoice(PERSISTENCE)
    return PredictorChoice(f"release:{state['release']}", layout.releases / state["release"])


def batch_key(layout: Layout, cfg: DifficultyConfig, batch: str, choice: PredictorChoice) -> str | None:
    """The key `batch`'s scores are up to date under, or None while the batch has no part in the corpus."""
    manifest = layout.cleaned_corpus / batch / BATCH_MANIFEST
    if not manifest.is_file():
        return None
    content = json.loads(manifest.read_text()).get("content_sha256")
    # The cadence decides when a round starts, not what a score is.
    return key_of(STEP, VERSION, dataclasses.replace(cfg, rescore_every_days=0.0), choice.id, content)


@dataclass(frozen=True)
class BatchState:
    batch: str
    key: str
    """The key its scores are up to date under."""
    due: str | None
    """Why it is to be scored (not scored yet, another predictor, its records or the config changed); None: up to date."""
    result: dict | None = None
    """Its scoring run's recorded result, when up to date."""


def _recorded(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / STEP_JSON).read_text())
    except (OSError, ValueError):
        return None


def batch_states(layout: Layout, cfg: DifficultyConfig, choice: PredictorChoice) -> list[BatchState]:
    """Every batch of the cleaned corpus, in batch order, with whether its scores are up to date."""
    states = []
    for batch in batch_folders(layout.cleaned_corpus):
        if (key := batch_key(layout, cfg, batch, choice)) is None:
            continue
        out = layout.difficulty_scores / batch
        due, result = None, reused(out, key)
        if result is None:
            recorded = (_recorded(out) or {}).get("result") or {}
            if not recorded:
                due = "not scored yet"
            elif recorded.get("predictor_id") != choice.id:
                due = f"scored by {recorded.get('predictor_id')}, now {choice.id}"
            else:
                due = "its records or the scoring config changed"
        states.append(BatchState(batch, key, due, result))
    return states


def due_batches(layout: Layout, cfg: DifficultyConfig, advance: bool = False) -> tuple[PredictorChoice, list[BatchState]]:
    """(the predictor now, the batches of the corpus whose difficulty is to be scored); `advance`: as
    `predictor_choice`'s (the difficulty sensor and the command line start a due round, nothing else does)."""
    choice = predictor_choice(layout, cfg, advance=advance)
    return choice, [s for s in batch_states(layout, cfg, choice) if s.due]


class DifficultyPending(RuntimeError):
    """The curriculum's inputs are not ready: some batch's difficulty is not up to date."""

    def __init__(self, late: list[BatchState], choice: PredictorChoice, total: int):
        self.late = late
        names = "; ".join(f"{s.batch} ({s.due})" for s in late[:10]) + (" ..." if len(late) > 10 else "")
        super().__init__(
            f"the difficulty of {len(late)} of {total} batches is not up to date for predictor {choice.id}: {names}. "
            "The curriculum never mixes scores of two predictors or stale ones: it waits until they are scored. "
            "Materialize their difficulty_scores partitions (the difficulty sensor requests them by itself; without "
            "the daemon: python -m pipelines.batches --difficulty lists them)."
        )


def current_scores(layout: Layout, cfg: DifficultyConfig) -> tuple[list[Path], dict]:
    """(the scores file of every batch of the corpus, their lineage: the predictor and each batch's scorer
    key and counts), for the curriculum; raises DifficultyPending unless every batch is up to date."""
    choice = predictor_choice(layout, cfg)
    states = batch_states(layout, cfg, choice)
    if late := [s for s in states if s.due]:
        raise DifficultyPending(late, choice, len(states))
    batches = {s.batch: {k: s.result[k] for k in ("records", "scorer_key", "encoder", "layer")} for s in states}
    files = [layout.difficulty_scores / s.batch / SCORES for s in states]
    return files, {"predictor": choice.id, "batches": batches}


class NotInCorpus(RuntimeError):
    pass


def score_partition(layout: Layout, cfg: DifficultyConfig, batch: str) -> tuple[dict, str, bool]:
    """Score one batch's part of the cleaned corpus into difficulty_scores/<batch>/ (atomically, the step's
    record last): (the result, the key, whether it was reused as it stood: nothing scored)."""
    choice = predictor_choice(layout, cfg)
    key = batch_key(layout, cfg, batch, choice)
    if key is None:
        raise NotInCorpus(
            f"batch {batch!r} has no part in the cleaned corpus yet (not cleaned, or not every record accounted "
            "for): materialize cleaned_batch and cleaned_corpus first"
        )
    out = layout.difficulty_scores / batch
    if (result := reused(out, key)) is not None:
        return result, key, True
    result = score_difficulty(layout.cleaned_corpus / batch, out, cfg, load_predictor(choice), key, extra={"predictor_id": choice.id})
    return result, key, False
