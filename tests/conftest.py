"""Test set-up: JAX sees 8 virtual CPU devices (set before jax is imported anywhere).

XLA compiles the suite's programs faster than a real run does (`xla_settings.SUITE_FLAGS`,
inherited by the processes tests start): LLVM's optimizations off and XLA's older CPU
fusion emitters. Compiling is nearly half the suite's CPU time, and for the tiny models
here it is mostly code generation: the train step of the tiny Llama compiles in 1.1 s
instead of 1.8 s at LLVM level 0 alone, and a JAX-heavy subset (sharding, stacked layers,
pruning, generation, dynamic sparsity, train step; two workers) ran in 118 s instead of
168 s (LLVM level 0 alone had taken a quarter off before). What a test can observe: the
values differ from a real run's by round-off (at most 1.9e-7 relative in eight losses of
the tiny Llama), far inside every bound asserted here; XLA's HLO passes run as in a real
run except that the emitters fuse some ops differently, which moves temporary bytes (by
1.6% in the tiny Llama's train step), so a test that asserts `memory_analysis()`
temporaries compiles with `xla_settings.REAL_RUN` (the same bytes as under XLA's
defaults). Keep models shallow: the older emitters compile a deep model with its layers
looped far more slowly (llama-50m's step at 32 layers, LLVM at its default level: 77-82 s
against 20 s). Real runs and `make bench` compile without these flags (their train and
eval steps at LLVM -O2, `core.step.compiler_options`, which leaves the level to XLA_FLAGS
where those set it, as here).

PyTorch computes on one OpenMP thread, here and in the processes tests start: `make test`
runs two workers on a two-core machine, and OpenMP threads that spin while they wait for
work take the other worker's core (a mixed subset of the suite ran a tenth faster so).
"""

import os

from xla_settings import SUITE_FLAGS

os.environ.setdefault("XLA_FLAGS", SUITE_FLAGS)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """One persistent XLA compilation cache for the test session, shared by its xdist
    workers and by every process the tests start: the suite runs the same tiny models'
    steps in dozens of `jax-sft` processes, and each would otherwise compile them again.
    Set before any test module imports jax; it lives in the session's temporary directory.
    Only compiles of 0.5 s or more are kept: writing every small one costs more than it
    saves, the more so as JAX scans the whole directory on every write."""
    root = config._tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, shared by its workers
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "xla-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    # A size limit makes JAX read and write entries under a file lock: no process reads
    # an entry another is still writing.
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))


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
