"""The artifact layout: every folder and file name under KILN_DATA_DIR, in one place.

Each asset keeps its artifacts in a folder named after it (the Dagster asset key is the folder name;
the release asset's folder is `releases/`). `Layout(root).<asset>` is that folder; the constants below
name the files in it. The library's functions take folders as arguments and find their files by these
names; the assets and sensors get the folders from `Kiln.layout`. Only the standard library is
imported: every module may import this one.

    $KILN_DATA_DIR/
        landing/                  the default landing zone (KILN_LANDING_DIR moves it)
        dagster_home/             DAGSTER_HOME of `make demo` and `make ui` (the Makefile names it too)
        clip_model/               kiln_clip.json and kiln's CLIP in Hugging Face format
        cleaned_batch/<batch>/    <modality>.parquet, _manifest.json, _histograms.png, _histograms.json
        rejected/<batch>/         <modality>.parquet, <modality>.duplicates.parquet
        cleaned_corpus/<batch>/   <modality>.parquet, _<modality>.minhash.npy, _manifest.json
        difficulty_scores/<batch>/ scores.parquet, _step.json (one landing batch's scores)
        difficulty_scores/        _predictor.json (predictor "release": the release scoring this round)
        tokenizer/                tokenizer.json and the rest of a Hugging Face tokenizer, _step.json
        tokenized_corpus/<batch>/ tokens.bin, index.parquet, _step.json (the batch's records, encoded once)
        curriculum/               stage_NN.parquet, heldout.parquet, contaminated.parquet, curriculum.json,
                                  levels_by_batch.png, _step.json
        checkpoints/stage_NN/     spec.json, metrics.jsonl and the DeepSpeed checkpoints of stage NN
        pretrain_stage_N/         model/, stage.json, metrics.jsonl, loss.png
        base_model/               model.safetensors, tokenizer.json, ... (Hugging Face)
        evaluation/               evaluation.json, eval_tasks/, _step.json
        quantized_model/          quantization.json and the int8 model (Hugging Face)
        gguf_model/               gguf.json, Modelfile, kiln-<file type>.gguf
        releases/                 LATEST, <version>/, <version>.tar
        releases/<version>/       base_model's files, README.md, manifest.json, lineage.json,
                                  evaluation.json, int8/, gguf/, eval_tasks/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Outside the assets' folders.
LANDING = "landing"
"""The default landing zone, where batches arrive when KILN_LANDING_DIR is not set."""
DAGSTER_HOME = "dagster_home"
"""The Dagster instance of `make demo` and `make ui` (the Makefile's DAGSTER_HOME default)."""

# Any step's folder (tokenizer/, difficulty_scores/, curriculum/, evaluation/)
STEP_JSON = "_step.json"
"""Written by `training.cache.record` last into a step's output folder: the step, its logic version, its
cache key, its result (what the asset's metadata is made of) and the output files' sizes."""

# clip_model/
CLIP_CARD = "kiln_clip.json"
"""Written by `training.clip.train.train_clip` beside kiln's own CLIP: what it is, what it was trained on."""

# cleaned_batch/<batch>/, rejected/<batch>/, cleaned_corpus/<batch>/
BATCH_MANIFEST = "_manifest.json"
"""Written by `training.data.clean` into each batch folder of cleaned_batch/ and cleaned_corpus/: cache keys, counts, lineage."""
HISTOGRAMS_PNG = "_histograms.png"
"""Written by `training.data.stats.batch_histograms` into cleaned_batch/<batch>/: the batch's histograms."""
HISTOGRAMS_JSON = "_histograms.json"
"""Written beside HISTOGRAMS_PNG: the numbers drawn, so a rerun with equal numbers keeps the picture."""


def batch_folders(root: Path) -> list[str]:
    """The batch folders under an output root, in order (hidden and temporary ones aside)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] not in "._") if root.is_dir() else []


def records_file(modality: str) -> str:
    """A modality's records in a batch folder (kept, rejected, or kept in the corpus)."""
    return f"{modality}.parquet"


def duplicates_file(modality: str) -> str:
    """rejected/<batch>/: the records `training.data.clean.build_corpus` rejected as duplicates."""
    return f"{modality}.duplicates.parquet"


def signatures_file(modality: str) -> str:
    """cleaned_corpus/<batch>/: the MinHash signatures of the kept records (training/data/near_dup.py), row for row."""
    return f"_{modality}.minhash.npy"


def exact_keys_file(modality: str) -> str:
    """cleaned_corpus/<batch>/: the kept records' content and id hashes with their rows, sorted (training/data/corpus_index.py)."""
    return f"_{modality}.keys.npy"


def band_keys_file(modality: str) -> str:
    """cleaned_corpus/<batch>/: the kept records' LSH band keys with their rows, sorted (training/data/near_dup.py)."""
    return f"_{modality}.bands.npy"


# difficulty_scores/<batch>/, difficulty_scores/
SCORES = "scores.parquet"
"""Written by `training.curriculum.difficulty.score_difficulty`: each record's difficulty, level and split."""
PREDICTOR_JSON = "_predictor.json"
"""Written by `training.curriculum.batches.predictor_choice` (predictor "release"): the release whose model
scores this round, and since when."""

# tokenizer/, and every Hugging Face model folder
TOKENIZER_JSON = "tokenizer.json"
"""The Hugging Face tokenizer file, written by `training.curriculum.tokenizer.train_tokenizer`."""
WEIGHTS = "model.safetensors"
"""A Hugging Face model folder's weights (base_model/, a release, pretrain_stage_N/model/)."""

# curriculum/
CURRICULUM_JSON = "curriculum.json"
"""Written by `training.curriculum.schedule.build_curriculum`: the schedule and, per stage, level, records, tokens, sha256."""
HELDOUT = "heldout.parquet"
"""Written by `build_curriculum`: the held-out records, for evaluation."""
CONTAMINATED = "contaminated.parquet"
"""Written by `build_curriculum`: training records moved out of every stage for sharing text with a held-out record."""
LEVELS_PNG = "levels_by_batch.png"
"""Written by `training.data.stats.level_histograms` into curriculum/: the share of each difficulty level, per batch."""
STAGE_FILES = "stage_*.parquet"
"""Every stage's records, as a glob."""


def stage_file(stage: int) -> str:
    """curriculum/: the records of one stage, in training order."""
    return f"stage_{stage:02d}.parquet"


# checkpoints/stage_NN/, pretrain_stage_N/
SPEC_JSON = "spec.json"
"""Written by the pretrain_stage_N asset into checkpoints/stage_NN/: the stage's `StageSpec`, the trainer's input."""
METRICS_JSONL = "metrics.jsonl"
"""Written by the trainer into checkpoints/stage_NN/, copied into pretrain_stage_N/: one line per step."""
STAGE_JSON = "stage.json"
"""Written by the trainer into pretrain_stage_N/: the finished stage's summary and fingerprint."""
STAGE_MODEL = "model"
"""pretrain_stage_N/: the stage's final weights in Hugging Face format."""
LOSS_PNG = "loss.png"
"""Written by the trainer into pretrain_stage_N/: the loss curve."""


def pretrain_stage_name(stage: int) -> str:
    """The asset key of pretraining stage `stage` (1-based), and its folder's name."""
    return f"pretrain_stage_{stage}"


BASE_MODEL = "base_model"
"""The asset key of the last stage's weights with the tokenizer, and its folder's name."""

# evaluation/ (and a release)
EVALUATION_JSON = "evaluation.json"
"""Written by the evaluation asset into evaluation/, shipped in the release: the measurements and the gate's inputs."""
EVAL_TASKS = "eval_tasks"
"""Written by `training.release.harness.write_tasks` into evaluation/, shipped in the release: lm-evaluation-harness tasks."""

# quantized_model/
QUANTIZATION_JSON = "quantization.json"
"""Written by `training.release.quantize.quantize_int8` into quantized_model/: the int8 model against the full one."""

# gguf_model/ (a release's gguf/)
GGUF_JSON = "gguf.json"
"""Written by `training.release.gguf.export_and_check` beside the GGUF files: their sha256 and llama.cpp's logits check."""
MODELFILE = "Modelfile"
"""Written beside the GGUF files: an Ollama Modelfile for the first of them."""

# releases/
LATEST = "LATEST"
"""Written by `training.release.publish.write_release` into releases/: the newest release's version."""


def latest(releases: Path) -> Path | None:
    """The newest release's folder under `releases`, or None before the first."""
    pointer = releases / LATEST
    if pointer.is_file() and (path := releases / pointer.read_text().strip()).is_dir():
        return path
    return None


RELEASE_MANIFEST = "manifest.json"
"""Written by `write_release` into releases/<version>/: every other file's sha256 and size."""
MODEL_CARD = "README.md"
"""Written by `training.release.assemble.assemble_release` into releases/<version>/: the model card."""
LINEAGE_JSON = "lineage.json"
"""Written by `training.release.assemble.assemble_release` into releases/<version>/: the batches, curriculum and stages it was trained on."""
RELEASE_INT8 = "int8"
"""releases/<version>/: quantized_model's files."""
RELEASE_GGUF = "gguf"
"""releases/<version>/: gguf_model's files."""


def archive_name(version: str) -> str:
    """releases/: a release folder as one file (an uncompressed tar), written by `training.release.publish.write_archive`."""
    return f"{version}.tar"


@dataclass(frozen=True)
class Layout:
    """The folders under one data directory (KILN_DATA_DIR): one per asset, named after it."""

    root: Path

    def asset(self, name: str) -> Path:
        """The folder of asset `name`'s artifacts: <root>/<name>."""
        return self.root / name

    @property
    def landing(self) -> Path:
        return self.root / LANDING

    @property
    def dagster_home(self) -> Path:
        return self.root / DAGSTER_HOME

    @property
    def clip_model(self) -> Path:
        return self.asset("clip_model")

    @property
    def cleaned_batch(self) -> Path:
        return self.asset("cleaned_batch")

    @property
    def rejected(self) -> Path:
        """Rejected records of cleaned_batch and cleaned_corpus, per batch: not an asset of its own."""
        return self.root / "rejected"

    @property
    def cleaned_corpus(self) -> Path:
        return self.asset("cleaned_corpus")

    @property
    def difficulty_scores(self) -> Path:
        return self.asset("difficulty_scores")

    @property
    def tokenizer(self) -> Path:
        return self.asset("tokenizer")

    @property
    def tokenized_corpus(self) -> Path:
        return self.asset("tokenized_corpus")

    @property
    def curriculum(self) -> Path:
        return self.asset("curriculum")

    def checkpoints(self, stage: int) -> Path:
        """Stage `stage`'s working folder: its spec and DeepSpeed checkpoints (not an asset's output)."""
        return self.root / "checkpoints" / f"stage_{stage:02d}"

    def pretrain_stage(self, stage: int) -> Path:
        return self.asset(pretrain_stage_name(stage))

    @property
    def base_model(self) -> Path:
        return self.asset(BASE_MODEL)

    @property
    def evaluation(self) -> Path:
        return self.asset("evaluation")

    @property
    def eval_tasks(self) -> Path:
        return self.evaluation / EVAL_TASKS

    @property
    def quantized_model(self) -> Path:
        return self.asset("quantized_model")

    @property
    def gguf_model(self) -> Path:
        return self.asset("gguf_model")

    @property
    def releases(self) -> Path:
        """The release asset's folder: every release, and LATEST."""
        return self.root / "releases"
