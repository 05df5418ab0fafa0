#!/usr/bin/env bash
# A short accelerator check, not part of `make test`: installs JAX's CUDA build into
# .venv, then times bf16 train steps of a ~1.1B-parameter Llama (configs/gpu-check-llama-1b.yaml)
# and prints tokens/s and MFU (`jax-sft bench`, the project's one FLOP formula).
set -euo pipefail
cd "$(dirname "$0")/.."
make venv-core
.venv/bin/python -m pip install -q "jax[cuda12]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
.venv/bin/python -c 'import jax; print(jax.devices())'
.venv/bin/jax-sft bench configs/gpu-check-llama-1b.yaml --steps "${STEPS:-10}" --json
