"""GGUF export of a kiln model folder, for llama.cpp and the runtimes built on it (Ollama, LM Studio,
llama-cpp-python), and the check that llama.cpp computes what transformers computes from it.

The file is written with the `gguf` package's `GGUFWriter` rather than llama.cpp's converter, which
refuses byte-level BPE tokenizers whose pre-tokenizer it does not recognise by hash (every freshly
trained kiln tokenizer). Everything the converter would infer is stated explicitly instead:

- architecture `llama` with its hyperparameters from config.json;
- tensors under llama.cpp's names (gguf's `TensorNameMap`), Q and K projections permuted from
  transformers' rotate-half RoPE layout (pairs (i, i + d/2)) to GGML's (pairs (2i, 2i + 1)), as
  llama.cpp's `convert_hf_to_gguf.py` does for Llama checkpoints; no `output.weight` when the
  embeddings are tied (llama.cpp then reuses `token_embd.weight`);
- the tokenizer as `gpt2` (byte-level BPE) with pre-tokenizer `gpt-2`, whose split regex is the one
  `tokenizers`' ByteLevel pre-tokenizer uses; special tokens as CONTROL tokens; a prompt starts with
  <|begin_of_text|> as kiln's records do, and no <|end_of_text|> is appended (it would end the
  document the model is asked to continue).

Run it with llama.cpp (`llama-cli -m kiln-f32.gguf -p "def main():"`) or Ollama (a Modelfile with
`FROM ./kiln-f32.gguf`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.fsutil import atomic_path
from training.layout import GGUF_JSON, MODELFILE, TOKENIZER_JSON, WEIGHTS

FILE_TYPES = ("f32", "q8_0")
"""f32: the trained weights exactly (kiln keeps fp32 weights), the reference the check is tight on.
q8_0: every matrix in llama.cpp's 8-bit blocks (32 weights and one fp16 scale), about 3.8x smaller."""

PRE_TOKENIZER = "gpt-2"
"""llama.cpp's pre-tokenizer whose regex is `tokenizers`' ByteLevel(use_regex=True) one:
's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"""


class GgufExportError(ValueError):
    """The model folder cannot be exported: what is missing or unsupported, and where."""


def gguf_name(name: str, file_type: str) -> str:
    return f"{name}-{file_type}.gguf"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise GgufExportError(f"{path.name} is missing in {path.parent}: not a kiln model folder")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise GgufExportError(f"{path} is not valid JSON ({e})") from e


def llama_hparams(config: dict, where: Path) -> dict:
    if config.get("model_type") != "llama":
        raise GgufExportError(f"{where}/config.json describes a {config.get('model_type')!r} model; only llama exports")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise GgufExportError(f"rope type {rope['rope_type']!r} is not exported; kiln trains the default RoPE")
    theta = rope.get("rope_theta", config.get("rope_theta", 10_000.0))
    try:
        heads = config["num_attention_heads"]
        return {
            "vocab": config["vocab_size"],
            "hidden": config["hidden_size"],
            "layers": config["num_hidden_layers"],
            "ffn": config["intermediate_size"],
            "heads": heads,
            "kv_heads": config.get("num_key_value_heads") or heads,
            "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
            "context": config["max_position_embeddings"],
            "eps": config["rms_norm_eps"],
            "theta": float(theta),
            "tied": bool(config.get("tie_word_embeddings", False)),
        }
    except KeyError as e:
        raise GgufExportError(f"{where}/config.json lacks {e.args[0]}") from e


def _vocab(tokenizer: dict, config: dict, where: Path) -> dict:
    """Tokens by id, their types, merges and special ids from tokenizer.json + tokenizer_config.json."""
    from gguf import TokenType

    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise GgufExportError(f"{where}/tokenizer.json holds a {model.get('type')!r} model; kiln exports byte-level BPE")
    pre = tokenizer.get("pre_tokenizer") or {}
    if not (pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)):
        raise GgufExportError(
            f"{where}/tokenizer.json pre-tokenizer {json.dumps(pre)} has no llama.cpp counterpart; kiln's is "
            "ByteLevel(add_prefix_space=False, use_regex=True), llama.cpp's gpt-2"
        )
    if tokenizer.get("normalizer") is not None:
        raise GgufExportError(f"{where}/tokenizer.json has a normalizer, which llama.cpp's gpt2 tokenizer does not apply")
    ids = dict(model["vocab"])
    added = {t["content"]: t for t in tokenizer.get("added_tokens", [])}
    for content, t in added.items():
        ids[content] = t["id"]
    size = config["vocab_size"]
    if max(ids.values()) >= size:
        raise GgufExportError(f"tokenizer ids reach {max(ids.values())}, beyond the model's vocab_size {size}")
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [int(TokenType.UNUSED)] * size
    for token, i in ids.items():
        tokens[i] = token
        types[i] = int(TokenType.NORMAL)
        if token in added:
            types[i] = int(TokenType.CONTROL if added[token].get("special") else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "ids": ids}


def _special_id(ids: dict, tok_config: dict, key: str) -> int | None:
    token = tok_config.get(key)
    if isinstance(token, dict):
        token = token.get("content")
    return ids.get(token) if token else None


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """transformers' rotate-half RoPE rows (each head: first halves, then second halves) to GGML's
    interleaved pairs; llama.cpp's converter applies the same to Llama's Q and K projections."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_tensors(model_dir: Path, hp: dict) -> dict[str, np.ndarray]:
    """The weights as float32 numpy arrays under llama.cpp's tensor names."""
    import gguf
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = model_dir / WEIGHTS
    if not path.is_file():
        raise GgufExportError(f"{WEIGHTS} is missing in {model_dir}: not a kiln model folder")
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as e:
        raise GgufExportError(f"{path} is unreadable ({e})") from e
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["layers"])
    out: dict[str, np.ndarray] = {}
    for key, tensor in state.items():
        if key.endswith("rotary_emb.inv_freq"):  # recomputed from rope_theta by every runtime
            continue
        if key == "lm_head.weight" and hp["tied"]:
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GgufExportError(f"{path} holds {key!r}, which has no llama.cpp tensor name")
        w = tensor.float().numpy()
        if key.endswith("q_proj.weight"):
            w = _permute(w, hp["heads"])
        elif key.endswith("k_proj.weight"):
            w = _permute(w, hp["kv_heads"])
        out[name] = np.ascontiguousarray(w)
    expected = ["token_embd.weight", "output_norm.weight"] + ([] if hp["tied"] else ["output.weight"])
    expected += [f"blk.{i}.{t}.weight" for i in range(hp["layers"]) for t in (
        "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    if missing := [n for n in expected if n not in out]:
        raise GgufExportError(f"{path} lacks the weights of {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return out


def export_gguf(model_dir: Path, out_dir: Path, name: str = "kiln", file_type: str = "f32") -> Path:
    """Write `<out_dir>/<name>-<file_type>.gguf` (atomically) from a kiln model folder: transformers
    LlamaForCausalLM safetensors with kiln's byte-level BPE tokenizer beside them."""
    import gguf

    if file_type not in FILE_TYPES:
        raise GgufExportError(f"file_type must be one of {FILE_TYPES}, not {file_type!r}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise GgufExportError(f"{model_dir} is not a folder: no model to export")
    config = _read_json(model_dir / "config.json")
    hp = llama_hparams(config, model_dir)
    vocab = _vocab(_read_json(model_dir / TOKENIZER_JSON), config, model_dir)
    tok_config = _read_json(model_dir / "tokenizer_config.json")
    tensors = llama_tensors(model_dir, hp)

    target = Path(out_dir) / gguf_name(name, file_type)
    with atomic_path(target) as tmp:
        w = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        w.add_name(name)
        w.add_context_length(hp["context"])
        w.add_embedding_length(hp["hidden"])
        w.add_block_count(hp["layers"])
        w.add_feed_forward_length(hp["ffn"])
        w.add_head_count(hp["heads"])
        w.add_head_count_kv(hp["kv_heads"])
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
        w.add_rope_dimension_count(hp["head_dim"])
        w.add_rope_freq_base(hp["theta"])
        w.add_layer_norm_rms_eps(hp["eps"])
        w.add_vocab_size(hp["vocab"])
        w.add_file_type(gguf.LlamaFileType.ALL_F32 if file_type == "f32" else gguf.LlamaFileType.MOSTLY_Q8_0)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(PRE_TOKENIZER)
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_token_merges(vocab["merges"])
        for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                         ("pad_token", w.add_pad_token_id), ("unk_token", w.add_unk_token_id)):
            if (token_id := _special_id(vocab["ids"], tok_config, key)) is not None:
                add(token_id)
        # As kiln frames a document: <|begin_of_text|> first; the end token only where a document ends.
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        if template := tok_config.get("chat_template"):
            w.add_chat_template(template)

        for tname, data in tensors.items():
            if file_type == "q8_0" and data.ndim == 2:
                w.add_tensor(tname, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                             raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:  # norms stay F32, as llama.cpp requires
                w.add_tensor(tname, data)
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    return target


def heldout_prompts(texts: Sequence[str], count: int, chars: int) -> list[str]:
    """The first `count` non-empty held-out texts, each cut to its first `chars` characters."""
    return [t[:chars] for t in texts if t.strip()][:count]


def compare_logits(model_dir: Path, gguf_path: Path, prompts: Sequence[str], tolerance: float, n_threads: int | None = None) -> dict:
    """Next-token logits of llama.cpp (llama-cpp-python, on `gguf_path`) and transformers (on
    `model_dir`) at every position of every prompt, fed the same ids: <|begin_of_text|> and
    the transformers tokenization of the prompt, cut to the model's context. Also whether
    llama.cpp's own tokenization of each prompt gives those ids. `passed`: every tokenization agrees
    and the largest absolute logit difference is within `tolerance`."""
    import torch
    from llama_cpp import GGML_TYPE_F32, Llama
    from llama_cpp import __version__ as llama_cpp_version
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not prompts:
        raise ValueError("no prompts to compare logits on")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    context = model.config.max_position_embeddings
    inputs = [([tokenizer.bos_token_id] + tokenizer(p, add_special_tokens=False)["input_ids"])[:context] for p in prompts]
    n_ctx = max(len(ids) for ids in inputs)  # llama.cpp keeps n_ctx x vocabulary logits: no more than needed
    # f32 key/value cache: the comparison measures the file, not llama.cpp's default f16 cache.
    llm = Llama(str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, verbose=False,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, n_threads=n_threads)
    max_diff, positions, top1, tokenization_mismatches = 0.0, 0, 0, []
    try:
        for i, (prompt, ids) in enumerate(zip(prompts, inputs)):
            # special=True: a special token written in the text is that token, as transformers reads it.
            theirs = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)[:context]
            if theirs != ids:
                tokenization_mismatches.append(i)
            with torch.no_grad():
                reference = model(torch.tensor([ids])).logits[0].float().numpy()
            llm.reset()
            llm.eval(ids)
            got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
            diff = float(np.max(np.abs(got - reference))) if np.isfinite(got).all() else math.inf
            max_diff = max(max_diff, diff)
            top1 += int(np.sum(got.argmax(-1) == reference.argmax(-1)))
            positions += len(ids)
    finally:
        llm.close()
    return {
        "prompts": len(prompts),
        "positions": positions,
        "max_abs_diff": max_diff,
        "top1_agreement": round(top1 / positions, 6),
        "tokenization_agrees": len(prompts) - len(tokenization_mismatches),
        "tokenization_mismatches": tokenization_mismatches,
        "tolerance": tolerance,
        "passed": not tokenization_mismatches and max_diff <= tolerance,
        "llama_cpp_python": llama_cpp_version,
    }


def modelfile(gguf_file: str) -> str:
    """An Ollama Modelfile for a base model: the prompt is passed through as it is, no chat template."""
    return f"FROM ./{gguf_file}\nTEMPLATE \"\"\"{{{{ .Prompt }}}}\"\"\"\n"


def export_and_check(
    model_dir: Path, out: Path, prompts: Sequence[str], file_types: Sequence[str], tolerances: dict[str, float],
    name: str = "kiln",
) -> dict:
    """Export `model_dir` as each of `file_types`, compare each file's llama.cpp logits with
    transformers' on `prompts`, and write the folder `out` atomically: the GGUF files, an Ollama
    Modelfile (for the first file) and gguf.json (returned) with the sha256 of the weights measured,
    hashed before they were read: the release gate accepts the record only for these very weights."""
    import time

    from training.fsutil import sha256_file
    from training.release.publish import WEIGHTS_SHA256

    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise GgufExportError(f"{WEIGHTS} is missing in {model_dir}: not a kiln model folder")
    record: dict = {WEIGHTS_SHA256: sha256_file(weights), "files": {}}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for file_type in file_types:
            start = time.perf_counter()
            path = export_gguf(model_dir, tmp, name, file_type)
            seconds = time.perf_counter() - start
            record["files"][path.name] = {
                "file_type": file_type,
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
                "export_seconds": round(seconds, 3),
                "comparison": compare_logits(model_dir, path, prompts, tolerances[file_type]),
            }
        (tmp / MODELFILE).write_text(modelfile(gguf_name(name, file_types[0])))
        (tmp / GGUF_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)
    return record
