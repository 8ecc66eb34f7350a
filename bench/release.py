"""Packaging a release at GPU scale (`training/release/publish.py` write_release): seconds and peak resident
set of publishing a `gpu-124m`-sized release (the folder, its manifest, the archive and the archive's
sha256) in a fresh child process, with the code of this checkout or of another kiln checkout (`--code`,
e.g. an export of an earlier commit: `git archive <commit> training | tar -x -C <dir>`); and what gzip
gains on each weights file (`--compression`): seconds and compressed size at the levels that matter.

The release's parts, written once under `<work>/release-gpu-124m/` and reused: the `gpu-124m` preset's
Llama (12 layers, 768 hidden, context 1024, the default 65,536-token vocabulary) at its random
initialization in float32 (`model.safetensors`, as the pretraining stages save it), its int8 variant
(`training/release/quantize.py`'s torchao quantization), and its f32 and q8_0 GGUF files (the
tensors `training/release/gguf.py` writes; the token list is placeholders of the vocabulary's size:
the weights are what weigh). Random weights are the hard case for a compressor, and trained weights are
not much easier: their float32 mantissas are noise as well.

By hand (`make bench` does not run it):
    python -m bench.release <work dir> [--code <kiln checkout>] [--compression]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

from bench.difficulty import status_kb

ROOT = Path(__file__).resolve().parents[1]
VERSION = "20261207-000000-0124abcd"
CHUNK = 1 << 20
GZIP_LEVELS = (1, 6, 9)
"""tarfile's "w:gz" compresses at level 9; gzip's own default is 6; 1 is the fastest."""


def prepare(work: Path) -> Path:
    """`<work>/release-gpu-124m/` with base/, int8/ and gguf/ (reused when already written)."""
    import torch

    from training.fsutil import atomic_path
    from training.pretrain.model import build_model, llama_config
    from training.presets import gpu_124m
    from training.config import TokenizerConfig

    root = work / "release-gpu-124m"
    card = {"preset": "gpu-124m", "vocab": TokenizerConfig().vocab_size, "dtype": "float32", "seed": 0}
    if (root / "parts.json").is_file() and json.loads((root / "parts.json").read_text()) == card:
        return root
    with atomic_path(root) as tmp:
        tmp.mkdir(parents=True)
        torch.manual_seed(0)
        model = build_model(llama_config(gpu_124m().model, card["vocab"]))
        model.save_pretrained(tmp / "base")
        del model
        from training.release.quantize import load_int8, save_model

        save_model(load_int8(tmp / "base").to("cpu"), tmp / "base", tmp / "int8")
        _write_gguf(tmp / "base", tmp / "gguf")
        (tmp / "parts.json").write_text(json.dumps(card) + "\n")
    return root


def _write_gguf(model_dir: Path, out: Path) -> None:
    import gguf

    from training.release.gguf import llama_hparams, llama_tensors

    out.mkdir()
    hp = llama_hparams(json.loads((model_dir / "config.json").read_text()), model_dir)
    tensors = llama_tensors(model_dir, hp)
    for file_type in ("f32", "q8_0"):
        w = gguf.GGUFWriter(out / f"kiln-{file_type}.gguf", arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        w.add_vocab_size(hp["vocab"])
        w.add_token_list([f"t{i}" for i in range(hp["vocab"])])
        for name, data in tensors.items():
            if file_type == "q8_0" and data.ndim == 2:
                w.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(name, data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


CHILD = """
import json, shutil, sys, time
from pathlib import Path
from bench.difficulty import status_kb
from training.release.publish import write_release
parts, releases, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
shutil.rmtree(releases, ignore_errors=True)
base_kb = status_kb("VmRSS")
start = time.perf_counter()
path = write_release(releases, version, {"": parts / "base", "int8": parts / "int8", "gguf": parts / "gguf"}, {"README.md": "# card\\n"})
seconds = time.perf_counter() - start
archive = [p for p in releases.iterdir() if p.is_file() and p.name.startswith(version) and not p.name.endswith(".sha256")]
print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(status_kb("VmHWM") / 1024, 1),
                  "rss_before_mb": round(base_kb / 1024, 1),
                  "release_bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                  "archive": archive[0].name, "archive_bytes": archive[0].stat().st_size}))
shutil.rmtree(releases)
"""


def measure(parts: Path, work: Path, code: Path = ROOT) -> dict:
    """Publish the parts as a release with `code`'s write_release in a fresh process (bench/ from this
    checkout, for status_kb); the release is removed afterwards."""
    env = {"PYTHONPATH": f"{code}:{ROOT}", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", CHILD, str(parts), str(work / "releases"), VERSION], cwd=code, env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"packaging failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1]) | {"code": str(code)}


def compression(parts: Path) -> dict:
    """Per weights file: bytes, and per gzip level seconds (one core, streamed) and compressed/original."""
    out = {}
    for path in sorted(parts.rglob("*.safetensors")) + sorted(parts.rglob("*.gguf")):
        row = {"bytes": path.stat().st_size}
        for level in GZIP_LEVELS:
            z, size, start = zlib.compressobj(level, zlib.DEFLATED, 31), 0, time.perf_counter()
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    size += len(z.compress(chunk))
            size += len(z.flush())
            row[f"gzip{level}"] = {"seconds": round(time.perf_counter() - start, 2), "ratio": round(size / row["bytes"], 4)}
        out[path.relative_to(parts).as_posix()] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path)
    p.add_argument("--code", type=Path, action="append", help="a kiln checkout whose write_release to measure (repeatable; default this one)")
    p.add_argument("--compression", action="store_true", help="also measure gzip on each weights file")
    args = p.parse_args()
    parts = prepare(args.work)
    results = {"parts_bytes": sum(f.stat().st_size for f in parts.rglob("*") if f.is_file()),
               "packaging": [measure(parts, args.work, code.resolve()) for code in args.code or [ROOT]]}
    if args.compression:
        results["compression"] = compression(parts)
    results["bench_rss_mb"] = round(status_kb("VmHWM") / 1024, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
