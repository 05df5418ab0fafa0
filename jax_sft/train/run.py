"""Starting a run from a RunConfig: the output directory's rules, the base model, the export.

An output directory that holds a checkpoint is resumed; one that holds anything else is
refused unless `overwrite` (which keeps the cached `base/`). The final model goes to
`OUTPUT_DIR/hf` as a Hugging Face directory.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from interop.config import RunConfig, load_config
from interop.errors import UserError
from interop.outputs import check_run_dir, clear_run_dir
from jax_sft.sharding.distributed import barrier, is_main
from jax_sft.train.base_model import ensure_base
from jax_sft.train.engine import Engine


def prepare_output(
    out: Path, *, overwrite: bool, resume: bool, allow_existing: bool = False
) -> None:
    """Apply the output-directory rules (`interop.outputs`), then clear and create it."""
    check_run_dir(out, overwrite=overwrite, resume=resume, allow_existing=allow_existing)
    clear_run_dir(out, overwrite=overwrite)


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
