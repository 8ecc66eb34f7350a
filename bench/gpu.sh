#!/usr/bin/env bash
# The GPU run, on a machine with CUDA and no network (shared/ENVIRONMENT.md: an H100, Python 3.12,
# torch+cu130, transformers, triton; no DeepSpeed):
#
#     bash bench/gpu.sh [WHEELS]        # WHEELS: the carried wheels, default .whl/
#
# installs DeepSpeed and the test runner from the carried wheels, runs the GPU-marked tests, then
# the benchmarks, writing results into $OUT (or bench/results/). One command after another: append
# more benchmarks at the end. The exit status is 1 when any step failed; every step runs regardless.
# PRESETS="gpu-124m" (default both) times one preset, for a runner that caps one command's time:
# seven of the ten variants of a preset compile.
#
# The wheels folder is made on a machine with the registry (cp312 manylinux wheels):
#     pip wheel --no-deps deepspeed==0.19.8 -w .whl/
#     pip download --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
#         --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#         -d .whl/ pydantic==2.14.3 pydantic-core==2.50.4 annotated-types typing-inspection typing-extensions \
#         hjson einops msgpack ninja py-cpuinfo psutil tqdm packaging pytest
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="${1:-.whl}"
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
# DeepSpeed's JIT ops fail to build for "9.0a" (ENVIRONMENT.md); kiln runs from this checkout.
export TORCH_CUDA_ARCH_LIST=9.0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

# Only what the machine lacks is installed; what it has (torch above all) stays.
python -m pip install --no-index --find-links "$WHEELS" deepspeed==0.19.8 pytest || exit 1
python -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, torch.cuda.get_device_name())" || exit 1

# The trainer's GPU test reads Parquet and draws loss curves: it needs pyarrow and matplotlib, which
# are too large to carry (pyarrow alone is 55 MB) and run only where the machine has them.
trainer_test=tests/training/test_train.py
python -c "import pyarrow, matplotlib" 2>/dev/null || { echo "no pyarrow/matplotlib: skipping $trainer_test"; trainer_test=; }
python -m pytest -q -m gpu -p no:cacheprovider tests/training/test_loss.py $trainer_test 2>&1 | tee "$OUT/pytest-gpu.txt" || status=1

# Training throughput: the reference loop, kiln's DeepSpeed step and its ablations (bench/training.py).
for preset in ${PRESETS:-gpu-124m gpu-350m}; do
    python -m bench.training --preset "$preset" --steps 20 --warmup 5 --out "$OUT/training-$preset.json" 2>&1 \
        | tee "$OUT/training-$preset.log" || status=1
done

# The data stages on the GPU: CLIP scoring end to end at ViT-B/32 size and BERTScore (bench/run.py;
# needs the project's data dependencies: Pillow, pyarrow, tokenizers, bert-score and the MiniLM wheel).
python -m bench.run --only clip,difficulty --name gpu-data --out "$OUT" 2>&1 | tee "$OUT/data-stages.log" || status=1

exit $status
