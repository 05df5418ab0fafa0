"""A jax-sft training checkpoint as a DeepSpeed checkpoint (`convert --to deepspeed`).

DeepSpeed's on-disk layout depends on its engine (partition padding and alignment, the
optimizer's parameter groups, ZeRO-3's per-parameter slices), so DeepSpeed writes it: we
hand the torch side (`torch-ref write-deepspeed`, launched with one process per
data-parallel rank) the run's parameters as an HF directory, its Adam moments under the
same HF names and its step counts; it builds the run's engine for the chosen ZeRO stage
and world size, sets those, and calls `engine.save_checkpoint`. What it writes is what
`torch-ref train` writes and resumes from.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from interop.checkpoints.deepspeed_files import config_dir
from interop.checkpoints.hf import read_hf_config, write_tensors
from interop.checkpoints.hf_write import write_hf_checkpoint
from interop.errors import BackendError, UserError
from interop.processes import free_port
from jax_sft.checkpoints.orbax_io import flatten
from jax_sft.models import registry, stacked
from jax_sft.models.hf_names import ours_to_hf

_ELASTIC = re.compile(r"^E\d{4} ")  # torchrun's log of a failed rank
MOMENTS = ("exp_avg", "exp_avg_sq")
STEPS = "steps.json"


def is_training_checkpoint(path: Path) -> bool:
    """A step (or tag) directory of a jax-sft run's `checkpoints/`."""
    return (path / "state").is_dir() and (path / "record").is_dir()


def write_transfer(src: Path, base: str | Path | None, dst: Path) -> dict:
    """The training checkpoint `src` as what the torch side reads, in `dst` (existing):
    an HF directory of the fp32 parameters, `exp_avg`/`exp_avg_sq.safetensors`, and
    `steps.json`; its HF config."""
    where = config_dir(src, base)
    config = read_hf_config(where)
    registry.family_of(config, f"{where / 'config.json'}")
    with ocp.PyTreeCheckpointer() as ckpt:
        tree = ckpt.restore((src / "state").absolute())
    adam = [p for p in tree["opt_state"] if isinstance(p, dict) and "mu" in p]
    if not adam or set(flatten(adam[0]["mu"])) != set(flatten(tree["params"])):
        raise UserError(
            f"{src}: not a dense run's checkpoint (only dense runs have Adam moments for "
            "every parameter, which a DeepSpeed checkpoint holds)"
        )
    table = registry.name_table(config)
    params = _per_layer(tree["params"])
    expected = registry.expected_shapes(config)
    wrong = [p for p, a in params.items() if expected.get(p) != a.shape]
    if wrong:
        raise UserError(f"{where / 'config.json'}: does not describe {src} ({wrong[0]})")
    write_hf_checkpoint(dst, ours_to_hf(table, params), config, tokenizer_src=where)
    for key, name in zip(("mu", "nu"), MOMENTS, strict=True):
        moments = _per_layer(adam[0][key])
        write_tensors(dict(ours_to_hf(table, moments)), dst / f"{name}.safetensors")
    steps = {"step": int(tree["step"]), "adam_count": int(adam[0]["count"])}
    (dst / STEPS).write_text(json.dumps(steps) + "\n")
    return config


def run_torch_writer(
    transfer: Path, dst: Path, config: Path, overrides: list[str], world_size: int, stage: int
) -> None:
    """`torch-ref write-deepspeed` with `world_size` processes; a BackendError with its
    last lines when it fails."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world_size)]
    argv += ["--master_port", str(free_port()), "-m", "torch_ref.cli", "write-deepspeed"]
    argv += [str(transfer), str(dst), str(config), "--zero-stage", str(stage)]
    for override in overrides:
        argv += ["--set", override]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ})
    if done.returncode == 0:
        return
    # what the ranks said, before torchrun's own report of their failure
    lines = done.stderr.strip().splitlines()
    lines = lines[: next((i for i, x in enumerate(lines) if _ELASTIC.match(x)), len(lines))]
    said = [x for x in lines if x.startswith("torch-ref: error: ")]
    if said:  # a user error, said in one line
        raise UserError(said[-1].removeprefix("torch-ref: error: "))
    tail = "\n".join(lines[-15:])
    raise BackendError(f"the torch side failed (exit {done.returncode}):\n{tail}")


def _per_layer(tree: dict) -> dict[str, np.ndarray]:
    """A restored parameter-shaped tree as fp32 arrays by per-layer path (a run that
    scanned its layers saved them stacked)."""
    return stacked.unstack_flat({p: np.asarray(a, np.float32) for p, a in flatten(tree).items()})
