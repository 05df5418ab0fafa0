"""The dependency arrows: jax_sft never imports torch, torch_ref never imports jax,
interop imports neither at module level. Checked in fresh interpreters via sys.modules."""

import json
import subprocess
import sys

from jax_sft import cli

FRAMEWORKS = ("torch", "deepspeed", "jax", "jaxlib", "flax", "optax", "orbax")


def modules_loaded_by(imports: list[str]) -> set[str]:
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in imports)
        + "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


INTEROP = [
    "interop.config",
    "interop.checkpoints.hf",
    "interop.checkpoints.formats",
    "interop.outputs",
    "interop.probe",
    "interop.report",
    "interop.tiny_configs",
    "interop.data.pipeline",
    "interop.data.batches",
    "interop.data.tokenizer",
    "interop.schedules",
    "interop.frontends.dschat",
    "interop.frontends.deepspeed_json",
    "interop.optim_groups",
    "interop.lora_format",
    "interop.sparse_format",
    "interop.plots",
    "interop.metrics_log",
    "interop.arguments",
    "interop.vocab",
    "interop.loop",
    "interop.preflight",
    "interop.processes",
    "interop.initialize_args",
    "interop.data.run_data",
]
JAX_SFT = [
    "jax_sft.cli",
    *(f"jax_sft.commands.{name}" for name in cli.COMMANDS),  # the CLI imports them lazily
    "jax_sft.checkpoints.loading",
    "jax_sft.models.registry",
    "jax_sft.train.engine",
    "jax_sft",
    "jax_sft.lora.mode",
    "jax_sft.lora.peft_io",
    "jax_sft.sparse.mode",
    "jax_sft.bench.sparse_study",
    "jax_sft.checkpoints.placed",
]


def test_interop_imports_no_framework():
    loaded = modules_loaded_by(INTEROP)
    assert not loaded & set(FRAMEWORKS), loaded & set(FRAMEWORKS)


def test_jax_sft_never_imports_torch():
    loaded = modules_loaded_by(JAX_SFT)
    assert "jax" in loaded  # the check sees real imports
    assert not loaded & {"torch", "deepspeed"}


def test_torch_ref_never_imports_jax():
    # One interpreter for all of them: whichever imported a JAX package, it would be loaded.
    loaded = modules_loaded_by(
        [
            "torch_ref.cli",
            "torch_ref.logits",
            "torch_ref.train.run",
            "torch_ref.train.api",
            "torch_ref.train.export",
        ]
    )
    assert "torch" in loaded  # the check sees real imports
    assert not loaded & {"jax", "jaxlib", "flax", "optax", "orbax"}
