"""Test set-up: JAX sees 8 virtual CPU devices (set before jax is imported anywhere)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """An HF directory: a randomly initialised tiny Llama with a pydoc-trained tokenizer."""
    from interop.config import RunConfig
    from jax_sft.train.base_model import ensure_base

    out = tmp_path_factory.mktemp("base-run")
    cfg = RunConfig.model_validate(
        {
            "model": {"tiny": "tiny-llama", "pretrain": {"steps": 0, "vocab_size": 320}},
            "train": {"output_dir": str(out)},
        }
    )
    return ensure_base(cfg)


@pytest.fixture(scope="session")
def parity_bases(tmp_path_factory):
    """{tiny name: HF dir} of the parity config's base model for Llama and OPT."""
    from interop.config import RunConfig
    from jax_sft.train.base_model import ensure_base

    bases = {}
    for tiny in ("tiny-llama", "tiny-opt"):
        cfg = RunConfig.model_validate(
            {
                "model": {"tiny": tiny, "pretrain": {"steps": 0, "vocab_size": 320}},
                "train": {"output_dir": str(tmp_path_factory.mktemp(tiny))},
            }
        )
        bases[tiny] = ensure_base(cfg)
    return bases
