# kiln: `make demo` runs the lifecycle on the embedded default, `make test` runs the tests on the CPU.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export KILN_DATA_DIR ?= $(CURDIR)/data
export KILN_PRESET ?= tiny
export DAGSTER_HOME ?= $(KILN_DATA_DIR)/dagster_home
# Never download models at run time: everything kiln loads is on disk.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY ?= error
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-fast bench ui serve landing clean-data lock tools-lock

# llama-cpp-python has no wheel on PyPI: pip compiles llama.cpp. Only the CPU library it loads (no tools,
# tests, examples or multimodal library), for any x86-64 with AVX2 rather than -march=native, so that a
# venv built on one machine runs on another.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF

# Every install goes through requirements.lock (-c): one version of each package `.[dev]` installs (the k8s
# extra too, pip itself and setuptools included), so that two fresh clones a week apart get the same venv.
# torch first, pinned to the CPU build that lies on these machines (/opt/wheels, which pip's configuration
# names): resolving a bare `torch` through the project's dependencies would fetch a multi-GB CUDA build
# instead. The lock pins torch==2.13.0 without a build label, so a CUDA 2.13.0 installed first on a GPU
# machine satisfies it. A changed lock reinstalls (an existing venv keeps packages the lock dropped: rm -r .venv for an exact one).
$(BIN)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c requirements.lock pip
	$(BIN)/pip install -q -c requirements.lock torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

# Regenerates requirements.lock from pyproject.toml with uv (pinned below, in a throwaway venv), which is
# the command this runs (the input on stdin pins torch to the CPU build and puts pip in the lock):
#
#     printf 'torch==2.13.0\npip\n' | uv pip compile pyproject.toml - --extra dev --python-version 3.11 \
#         --python-platform x86_64-manylinux_2_28 --find-links /opt/wheels --custom-compile-command 'make lock' \
#         -o requirements.lock
#
# --find-links /opt/wheels is what keeps CUDA out: uv does not read pip's configuration, and without the
# local CPU wheel it resolves PyPI's torch 2.13.0, whose metadata pulls nvidia-* and triton; the lock is
# refused unless it resolved torch==2.13.0+cpu and holds none of them; the +cpu label is then dropped from
# the lock (any 2.13.0 build satisfies it). Pins already in the lock are kept
# where pyproject.toml still allows them; `make lock LOCK_ARGS=--upgrade` moves everything to the newest
# allowed, LOCK_ARGS="--upgrade-package NAME" one package. Commit the lock with the change that needs it.
UV_VERSION := 0.13.9
lock:
	set -euo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; "$$tmp/venv/bin/pip" install -q uv==$(UV_VERSION); \
	if [ -f requirements.lock ]; then sed 's/^torch==2.13.0$$/torch==2.13.0+cpu/' requirements.lock > "$$tmp/lock"; fi; \
	printf 'torch==2.13.0\npip\n' | "$$tmp/venv/bin/uv" pip compile -q pyproject.toml - --extra dev \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links /opt/wheels \
		--custom-compile-command 'make lock' -o "$$tmp/lock" $(LOCK_ARGS); \
	grep -qx 'torch==2.13.0+cpu' "$$tmp/lock" || { echo "lock: torch is not 2.13.0+cpu" >&2; exit 1; }; \
	if grep -qiE '^(nvidia-|triton==)' "$$tmp/lock"; then echo "lock: CUDA packages in the lock" >&2; exit 1; fi; \
	sed -i 's/^torch==2.13.0+cpu$$/torch==2.13.0/' "$$tmp/lock"; mv "$$tmp/lock" requirements.lock

# Tools the tests run that cannot share the project's venv: checkov (the policy checks of deploy/ in
# tests/test_deploy.py) pins networkx<2.7, which the project's scikit-image refuses. It gets its own venv,
# .venv-tools/, installed exactly from requirements-tools.lock (--no-deps: the lock is complete), which
# `make tools-lock` regenerates from the one pin below. uv installs it (the uv of `make lock`, itself in
# that venv): about 15 s from scratch where pip took 100 s (96 packages, botocore's many files among them).
TOOLS_VENV := .venv-tools
CHECKOV_VERSION := 3.3.30
$(TOOLS_VENV)/bin/.installed: requirements-tools.lock
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q uv==$(UV_VERSION)
	$(TOOLS_VENV)/bin/uv pip install -q --python $(TOOLS_VENV)/bin/python --compile-bytecode --no-deps -r requirements-tools.lock
	touch $@

tools-lock:
	set -euo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; "$$tmp/venv/bin/pip" install -q uv==$(UV_VERSION); \
	echo 'checkov==$(CHECKOV_VERSION)' | "$$tmp/venv/bin/uv" pip compile -q - --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make tools-lock' -o "$$tmp/lock"; \
	mv "$$tmp/lock" requirements-tools.lock

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# The embedded default landing zone, written only when KILN_LANDING_DIR is not set.
landing: $(BIN)/.installed
	@if [ -z "$$KILN_LANDING_DIR" ]; then $(BIN)/python -m training.demo.landing $(KILN_DATA_DIR)/landing; fi

# What the daemon does by itself (`make ui`), step by step: the CLIP, each ready batch cleaned in its
# own partition run, the corpus, each batch's difficulty in its own run, then the retraining to a release.
DAGSTER_RUN := $(BIN)/dagster asset materialize -m pipelines.definitions
demo: $(BIN)/.installed $(DAGSTER_HOME)/dagster.yaml landing
	$(DAGSTER_RUN) --select clip_model
	set -e; batches=$$($(BIN)/python -m pipelines.batches); for batch in $$batches; do \
		$(DAGSTER_RUN) --select cleaned_batch --partition "$$batch"; done
	$(DAGSTER_RUN) --select cleaned_corpus
	set -e; batches=$$($(BIN)/python -m pipelines.batches --difficulty); for batch in $$batches; do \
		$(DAGSTER_RUN) --select difficulty_scores --partition "$$batch"; done
	$(BIN)/dagster job execute -m pipelines.definitions -j retraining

test: $(BIN)/.installed $(TOOLS_VENV)/bin/.installed
	$(BIN)/python -m pytest

# The inner loop: every test but those marked slow (multi-process, end-to-end, training, several assets
# through Dagster, over about 5 s); under 3 minutes on 2 cores. `make test` (CI) still runs them all.
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow"

# Every benchmark at full scale (1M text records, 50K code files; about 25 minutes on 2 cores):
# bench/results/<host>.json and .md. BENCH_ARGS="--only cleaning,clip" picks sections.
bench: $(BIN)/.installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

ui: $(BIN)/.installed $(DAGSTER_HOME)/dagster.yaml landing
	$(BIN)/dagster dev -m pipelines.definitions --host 127.0.0.1

# The release releases/LATEST names, behind an OpenAI-compatible API on 127.0.0.1:$KILN_SERVE_PORT (default
# 8000): POST /v1/completions, GET /v1/models. Restart it to serve a newer release.
serve: $(BIN)/.installed
	$(BIN)/python -m training.release.serve

clean-data:
	rm -rf $(KILN_DATA_DIR)
