"""Starting a run from a RunConfig: the output directory's rules, the base model, the export.

An output directory that holds a checkpoint is resumed; one that holds anything else is
refused unless `overwrite` (which keeps the cached `base/`). The final model goes to
`OUTPUT_DIR/hf` as a Hugging Face directory, and a mode's adapter to `OUTPUT_DIR/adapter`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from interop.config import RunConfig, load_config, with_sections
from interop.outputs import check_run_dir, clear_run_dir, removed_if_refused
from jax_sft.sharding.distributed import barrier, is_main
from jax_sft.train.base_model import ensure_base
from jax_sft.train.engine import Engine


def prepare_output(
    out: Path, *, overwrite: bool, resume: bool, allow_existing: bool = False
) -> None:
    """Apply the output-directory rules (`interop.outputs`), then clear and create it."""
    check_run_dir(out, overwrite=overwrite, resume=resume, allow_existing=allow_existing)
    clear_run_dir(out, overwrite=overwrite)


def model_source(config: RunConfig) -> Path:
    """The model a run starts from: `model.path`, or the tiny base (built and cached by
    process 0, then found by every process)."""
    if config.model.path:
        return Path(config.model.path)
    if is_main():
        ensure_base(config)
    barrier("ensure_base")
    return ensure_base(config)


def make_engine(
    config: RunConfig | str | Path, model: str | Path | None = None, engine_cls: type = Engine
) -> Engine:
    """The engine of a run: `config` is a RunConfig or a YAML path; `model` (an HF or
    Orbax directory, or an adapter) replaces the config's model source."""
    if not isinstance(config, RunConfig):
        config = load_config(config)
    if model is not None:
        config = with_sections(config, {"model": {"path": str(model), "tiny": None}})
    return engine_cls(config, model_source(config))


def train(
    config: RunConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    allow_existing: bool = False,
    on_eval: Callable[[dict], None] | None = None,
) -> dict:
    """Run to the end, export `OUTPUT_DIR/hf` (and the adapter); returns the summary."""
    out = Path(config.train.output_dir)
    created = not out.exists()
    if is_main():
        prepare_output(out, overwrite=overwrite, resume=resume, allow_existing=allow_existing)
    barrier("prepare_output")
    with removed_if_refused(out, created and is_main()):
        engine = make_engine(config)
    for note in engine.notes if is_main() else ():
        print(f"note: {note}", file=sys.stderr)
    summary = engine.fit(on_eval)
    engine.export_hf(out / "hf")
    engine.export_adapter(out / "adapter")
    return {**summary, "output_dir": str(out)}
