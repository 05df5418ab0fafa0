"""Starting a run from a RunConfig: its directory, the base model, the export.

The directory's rules are `interop.run_dir`'s: a checkpoint of this run is resumed; a new
run is staged beside the directory and takes its place once complete (with `overwrite`
replacing what was there, whose cached `base/` it keeps). The final model goes to
`OUTPUT_DIR/hf` as a Hugging Face directory, and a mode's adapter to `OUTPUT_DIR/adapter`.
`prepare_output` is the simpler rule of commands that write a report directory.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from interop.config import RunConfig, with_sections
from interop.config_files import load_config
from interop.outputs import check_run_dir, clear_run_dir
from interop.run_dir import run_directory
from jax_sft.sharding.distributed import barrier, is_main, share_int
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
    """Run to the end in the run's directory (`interop.run_dir`: staged, locked, checked
    against its checkpoint), export `hf/` and the adapter; returns the summary.
    `allow_existing` writes in place (DeepSpeed-Chat's `--output_dir`)."""
    with run_directory(
        config,
        "jax",
        is_main=is_main(),
        share=share_int,
        barrier=lambda: barrier("run_directory"),
        overwrite=overwrite,
        resume=resume,
        in_place=allow_existing,
    ) as cfg:
        engine = make_engine(cfg)
        for note in engine.notes if is_main() else ():
            print(f"note: {note}", file=sys.stderr)
        summary = engine.fit(on_eval)
        engine.export_hf(engine.out / "hf")
        engine.export_adapter(engine.out / "adapter")
    return {**summary, "output_dir": str(Path(config.train.output_dir))}
