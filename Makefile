# Two commands: `make demo` and `make test`. Each creates or updates .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := constraints.txt

.PHONY: demo test lint bench bench-sparse bench-deepspeed bench-prune bench-generate bench-data bench-compile venv-core venv-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps record what was installed so an unchanged tree is not re-installed.
# pip byte-compiles what it installs on one core; compileall does it on every core, and
# skips the packages' own test suites and the transformers model families nothing here
# imports (2,500 of its files: 41 s -> 28 s on two cores; a module left out still imports,
# compiled as it loads). A file it cannot compile (one written for a newer Python) is left
# as pip leaves it: never imported here.
FAMILIES := auto|bloom|encoder_decoder|gpt2|llama|mistral|opt|qwen2
SKIP := /tests/|/transformers/models/(?!($(FAMILIES))/)
COMPILE := $(BIN)/python -m compileall -qq -j 0 -x '$(SKIP)' $(VENV)/lib/python*/site-packages || true

$(VENV)/.core: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q --no-compile -c $(CONSTRAINTS) -e .
	$(COMPILE)
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q --no-compile -c $(CONSTRAINTS) -e '.[torch,dev]'
	$(COMPILE)
	touch $@ $(VENV)/.core

venv-core: $(VENV)/.core
venv-dev: $(VENV)/.dev

demo: venv-core
	$(BIN)/jax-sft train configs/demo.yaml --overwrite
	$(BIN)/jax-sft compare-answers out/demo/base/hf out/demo/hf --prompts configs/data/demo_prompts.jsonl \
		--out out/demo/answers --overwrite --max_new_tokens 48

test: venv-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2

# Benchmarks (figures, never pass/fail): training speed of both backends in one run
# (docs/benchmarks.md, docs/train-speed.{png,json}; about 20 minutes here); the sparse quality study,
# which rewrites docs/sparse-study.{md,png,json}; peak memory of converting a DeepSpeed
# checkpoint, ours beside DeepSpeed's zero_to_fp32.py (writes a 2 GB checkpoint under out/).
bench: venv-dev
	$(BIN)/jax-sft bench --compare --steps 4 --rounds 3 --json

bench-sparse: venv-core
	$(BIN)/jax-sft bench --sparse configs/demo.yaml
	$(BIN)/jax-sft bench --sparse configs/study-4m.yaml --docs docs/llama-4m --work out/study-4m/sparse-study

bench-deepspeed: venv-dev
	$(BIN)/python scripts/deepspeed_convert_memory.py

bench-prune: venv-dev
	$(BIN)/jax-sft bench --prune configs/demo.yaml
	$(BIN)/jax-sft bench --prune configs/study-4m.yaml --docs docs/llama-4m --work out/study-4m/pruning-study
	$(BIN)/jax-sft bench --generate --pruned --rounds 5
	$(BIN)/python scripts/pruned_forward_speed.py

bench-generate: venv-dev
	$(BIN)/jax-sft bench --generate
	$(BIN)/python scripts/decode_breakdown.py

# Data at scale: 2-step runs on 1,000 and 1,000,000 prompt/chosen rows (writes a 0.5 GB
# file and its token cache under out/bench-data; docs/benchmarks.md).
bench-data: venv-core
	$(BIN)/jax-sft bench --data --json

# Compile time of the train step, decoder layers looped and scanned (docs/benchmarks.md;
# about 5 minutes here).
bench-compile: venv-core
	$(BIN)/jax-sft bench --compile --json

lint: venv-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV)
