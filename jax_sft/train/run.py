"""Starting a run from a RunConfig: the output directory's rules, the base model, the export.

An output directory that holds a checkpoint is resumed; one that holds anything else is
refused unless `overwrite` (which keeps the cached `base/`). The final model goes to
`OUTPUT_DIR/hf` as a Hugging Face directory.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from interop.config import RunConfig, load_config
from interop.errors import UserError
from jax_sft.sharding.distributed import barrier, is_main
from jax_sft.train.base_model import ensure_base
from jax_sft.train.engine import Engine

KEEP_ON_OVERWRITE = ("base",)


def prepare_output(
    out: Path, *, overwrite: bool, resume: bool, allow_existing: bool = False
) -> None:
    """Apply the output-directory rules; `allow_existing` writes beside files already there
    (DeepSpeed-Chat's scripts create `--output_dir` and log into it before training)."""
    has_checkpoint = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    if resume and not has_checkpoint:
        raise UserError(f"--resume: {out} holds no checkpoint")
    if overwrite and out.exists():
        for child in out.iterdir():
            if child.name not in KEEP_ON_OVERWRITE:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    elif out.exists() and not has_checkpoint and not allow_existing:
        leftovers = [c.name for c in out.iterdir() if c.name not in KEEP_ON_OVERWRITE]
        if leftovers:
            raise UserError(
                f"train.output_dir: {out} exists and holds no checkpoint to resume; "
                "pass --overwrite to replace it"
            )
    out.mkdir(parents=True, exist_ok=True)


def initialize(config: RunConfig | str | Path, model: str | Path | None = None) -> Engine:
    """The engine of a run, as DeepSpeed's `initialize` gives one: `config` is a RunConfig or
    a YAML path; `model` (an HF or Orbax directory) replaces the config's model source."""
    if not isinstance(config, RunConfig):
        config = load_config(config)
    if model is not None:
        config = config.model_copy(
            update={"model": config.model.model_copy(update={"path": str(model), "tiny": None})}
        )
    if config.model.path:
        model_dir = Path(config.model.path)
    else:
        if is_main():
            ensure_base(config)
        barrier("ensure_base")
        model_dir = ensure_base(config)  # cached by now: every process finds the same base
    return Engine(config, model_dir)


def train(
    config: RunConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    allow_existing: bool = False,
    on_eval: Callable[[dict], None] | None = None,
) -> dict:
    """Run to the end, export `OUTPUT_DIR/hf`; returns the summary."""
    out = Path(config.train.output_dir)
    created = not out.exists()
    if is_main():
        prepare_output(out, overwrite=overwrite, resume=resume, allow_existing=allow_existing)
    barrier("prepare_output")
    try:
        engine = initialize(config)
    except UserError:
        if created and is_main() and not any(out.iterdir()):
            out.rmdir()  # a refused run leaves no trace
        raise
    for note in engine.notes if is_main() else ():
        print(f"note: {note}", file=sys.stderr)
    summary = engine.fit(on_eval)
    engine.export_hf(out / "hf")
    if config.sparse.method != "none" or config.lora.rank > 0:
        engine.export_adapter(out / "adapter")
    return {**summary, "output_dir": str(out)}
