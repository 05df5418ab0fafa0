"""`jax-sft parity CONFIG.yaml --steps N [--torch-procs P]`: train both backends from one
initial checkpoint on the same batches and compare them step by step.

The harness makes the starting point once: the config's HF model (or its tiny base, built
and cached as `jax-sft train` does) and, for sparse and LoRA runs, the JAX side's initial
adapter (zero deltas on the chosen index sets; LoRA factors with B = 0), so both sides
train exactly the same entries from exactly the same values. It writes the run's final
config to `OUT/run.yaml`, then runs `torch-ref train` as a subprocess (under torchrun with
P processes when P > 1) into `OUT/torch`, and `jax-sft train` on P devices into `OUT/jax`
(in this process when it holds P devices, else as a subprocess given P virtual CPU
devices), and compares what they wrote (`interop.parity`), ending with
each framework's own forward pass of its own final weights on the probe batch (logits;
the torch side computes its own at the end of its run):
`OUT/parity.json`, `OUT/parity.png`. A torch side that cannot run is reported as such,
with its stderr tail, never as a parity failure. With `train.resume_from` (a DeepSpeed
checkpoint; a JAX run's goes through `jax-sft convert --to deepspeed` first) both sides
start from that checkpoint and compare the steps after it.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import jax
import numpy as np

from interop.arguments import add_json, add_overrides
from interop.boundary import run_command
from interop.config import RunConfig, with_sections
from interop.config_files import dump_config, load_config
from interop.errors import BackendError, UserError
from interop.frontends.deepspeed_json import overrides_from_deepspeed
from interop.parity import compare_losses, compare_params, final_eval, plot, step_losses
from interop.probe import max_abs_logit_diff, probe_batch
from interop.processes import free_port, run_side, side_ended, with_cpu_devices
from interop.report import emit, eval_printer
from jax_sft.checkpoints.loading import read_checkpoint
from jax_sft.models.logits import jax_logits
from jax_sft.sharding.mesh import AXES, mesh_shape
from jax_sft.train.base_model import ensure_base
from jax_sft.train.modes import mode_class
from jax_sft.train.run import make_engine, prepare_output, train

PROBE_LOGITS = "probe-logits.npy"  # the torch side's logits of its export, written by torch-ref


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="train JAX and PyTorch/DeepSpeed side by side and compare")
    p.add_argument("config", help="YAML run config")
    add_overrides(p)
    p.add_argument(
        "--deepspeed_config",
        help="a DeepSpeed JSON config laid over CONFIG, as `train --deepspeed_config` does",
    )
    p.add_argument("--steps", type=int, default=50, help="optimizer steps on each side")
    p.add_argument("--torch-procs", type=int, default=1, help="data-parallel processes/devices")
    p.add_argument("--rtol", type=float, default=1e-4, help="allowed per-step relative loss diff")
    p.add_argument("--param-atol", type=float, default=1e-5, help="allowed final max |param diff|")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    add_json(p)
    p.set_defaults(run=run)


def starting_point(cfg: RunConfig, out: Path) -> RunConfig:
    """`cfg` pointed at the shared initial checkpoint (and adapter) in `out`."""
    if cfg.model.path is None:
        base = ensure_base(with_sections(cfg, {"train": {"output_dir": str(out)}}))
        cfg = with_sections(cfg, {"model": {"path": str(base), "tiny": None}})
    if mode_class(cfg).adapter_kind is None:
        return cfg
    engine = make_engine(with_sections(cfg, {"parallel": {"data": 1, "fsdp": 1, "tensor": 1}}))
    engine.export_adapter(out / "init-adapter")
    return with_sections(
        cfg, {"model": {"path": str(out / "init-adapter"), "base": str(engine.model_dir)}}
    )


def run_sides(config: Path, out: Path, procs: int) -> None:
    """`torch-ref train` and `jax-sft train` on the same config, into out/torch, out/jax;
    the reference first, since it is the side that refuses what it does not implement."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("deepspeed") is None:
        raise BackendError(
            "the torch side cannot run: torch and deepspeed are not installed "
            "(pip install -e '.[torch]'), so nothing was compared"
        )
    torch_args = ["train", str(config), "--set", f"train.output_dir={out / 'torch'}"]
    torch_args += ["--set", f"parallel.data={procs}", "--overwrite"]
    torch_args += ["--probe-logits", str(out / "torch" / PROBE_LOGITS)]
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
        launcher += ["--master_port", str(free_port()), "-m", "torch_ref.cli"]
    else:
        launcher = [sys.executable, "-m", "torch_ref.cli"]
    run_side("torch", [*launcher, *torch_args], dict(os.environ), out / "torch.log")
    run_jax_side(config, out, procs)


def run_jax_side(config: Path, out: Path, procs: int) -> None:
    """`jax-sft train` on `config` into out/jax, on P devices: in this process when it
    holds P (the mesh takes the first P; JAX is loaded already), else in a child process
    given P virtual CPU devices. Its output goes to out/jax.log either way."""
    settings = [f"train.output_dir={out / 'jax'}", f"parallel.data={procs}"]
    if len(jax.devices()) < procs:
        env = {**os.environ, "XLA_FLAGS": with_cpu_devices(os.environ.get("XLA_FLAGS", ""), procs)}
        argv = [sys.executable, "-m", "jax_sft.cli", "train", str(config), "--overwrite"]
        for setting in settings:
            argv += ["--set", setting]
        run_side("jax", argv, env, out / "jax.log")
        return

    def command() -> int:
        cfg = load_config(config, settings)
        shape = dict(zip(AXES, mesh_shape(cfg.parallel, procs), strict=True))  # the child's
        cfg = with_sections(cfg, {"parallel": shape})
        train(cfg, overwrite=True, on_eval=eval_printer(cfg.logging.style))
        return 0

    with redirect_stdout(io.StringIO()) as stdout, redirect_stderr(io.StringIO()) as stderr:
        status = run_command("jax-sft", command)
    side_ended("jax", status, stdout.getvalue(), stderr.getvalue(), out / "jax.log")


def compared_losses(out: Path, steps: int, resumed: bool = False) -> dict:
    """Both sides' per-step losses, compared; every step up to `steps` must be there on
    both, from step 1, or (`resumed`: both started from `train.resume_from`) from the
    step after the checkpoint's."""
    sides = [step_losses(out / side / "metrics.jsonl") for side in ("jax", "torch")]
    losses = compare_losses(*sides)
    first = min(losses["steps"], default=1) if resumed else 1
    expected = list(range(first, steps + 1))
    if any(sorted(side) != expected for side in sides):
        found = [sorted(side) for side in sides]
        raise BackendError(f"expected steps {first}-{steps} logged on each side, found {found}")
    return losses


def summarize(out: Path, steps: int, procs: int, resumed: bool = False) -> dict:
    """parity.json's object from what both sides wrote."""
    losses = compared_losses(out, steps, resumed)
    params = compare_params(out / "jax" / "hf", out / "torch" / "hf")
    _, config, flat = read_checkpoint(out / "jax" / "hf")
    batch = probe_batch(config["vocab_size"])
    ours, theirs = jax_logits(config, flat, batch), np.load(out / "torch" / PROBE_LOGITS)
    if ours.shape != theirs.shape:
        raise BackendError(
            f"the sides' probe logits differ in shape: jax {ours.shape}, torch {theirs.shape}"
        )
    logit_diff = max_abs_logit_diff(ours, theirs, batch["attention_mask"])
    evals = {side: final_eval(out / side / "metrics.jsonl") for side in ("jax", "torch")}
    summary = {
        "steps": steps,
        "processes": procs,
        **losses,
        **params,
        "final_max_abs_logit_diff": logit_diff,
        "final_eval": evals,
    }
    distill = [step_losses(out / side / "metrics.jsonl", "distill") for side in ("jax", "torch")]
    if any(distill):  # the distillation term logged on both sides, step for step
        same = sorted(distill[0]) == sorted(distill[1])
        worst = compare_losses(*distill)["max_rel_loss_diff"] if same else float("inf")
        summary["max_rel_distill_diff"] = worst
    return summary


def run(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.torch_procs < 1:
        raise UserError("--steps and --torch-procs must be >= 1")
    layers = []
    if args.deepspeed_config:
        ds, notes = overrides_from_deepspeed(
            Path(args.deepspeed_config), data_parallel_size=args.torch_procs
        )
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        layers.append((args.deepspeed_config, ds))
    cfg = load_config(args.config, args.overrides, layers)
    out = Path(cfg.train.output_dir)
    prepare_output(out, overwrite=args.overwrite, resume=False)
    cfg = with_sections(
        starting_point(cfg, out),
        {"train": {"max_steps": args.steps, "log_every": 1, "save_every": None}},
    )
    config = out / "run.yaml"
    config.write_text(dump_config(cfg))
    run_sides(config, out, args.torch_procs)
    summary = summarize(out, args.steps, args.torch_procs, resumed=bool(cfg.train.resume_from))
    passed = (
        summary["max_rel_loss_diff"] <= args.rtol
        and summary["final_max_abs_param_diff"] <= args.param_atol
        and (cfg.training_mode != "prune" or summary["zero_mismatches"] == 0)
        and summary.get("max_rel_distill_diff", 0.0) <= args.rtol
    )
    summary.update(passed=passed, rtol=args.rtol, param_atol=args.param_atol)
    (out / "parity.json").write_text(json.dumps(summary, indent=1) + "\n")
    trained = {
        "sparse": f"sparse {cfg.sparse.method}",
        "lora": f"LoRA r={cfg.lora.rank}",
        "prune": "pruned " + ", ".join(r.pattern for r in cfg.prune.rules),
    }.get(cfg.training_mode, cfg.training_mode)
    title = (
        f"{Path(args.config).name}: {trained}, {cfg.model.dtype}, ZeRO-{cfg.parallel.zero_stage}, "
        f"{args.torch_procs} process(es)"
    )
    plot(out / "parity.png", summary["steps"], summary["loss_jax"], summary["loss_torch"], title)
    verdict = "within" if passed else "OUTSIDE"
    invariant = summary["final_max_abs_invariant_diff"]
    key_biases = (
        ""
        if invariant is None
        else f"key-projection biases (no output depends on them) {invariant:.3e} apart; "
    )
    lines = [
        f"max relative loss difference {summary['max_rel_loss_diff']:.3e} over "
        f"{len(summary['steps'])} steps; final max |param diff| "
        f"{summary['final_max_abs_param_diff']:.3e} ({summary['worst_tensor']}); "
        f"{key_biases}final max |logit diff| {summary['final_max_abs_logit_diff']:.3e}; "
        f"entries zero on one side only {summary['zero_mismatches']}; {verdict} rtol "
        f"{args.rtol:g}, param atol {args.param_atol:g}",
        f"wrote {out / 'parity.json'} and {out / 'parity.png'}",
    ]
    emit(lines, {k: v for k, v in summary.items() if k != "per_tensor"}, args.json)
    return 0 if passed else 1
