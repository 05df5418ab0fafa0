"""`jax-sft prune MODEL OUT --method M --sparsity S --pattern P`: one-shot pruning.

Prunes a local Hugging Face model once, without training, on the host in numpy: the
flags become a `prune` config section (checked by the run-config schema, so a bad value
is the same error a YAML file would give), the `Pruner` cuts at step 0, and OUT gets

- `OUT/hf`: the model with the pruned entries exactly zero, or, for `rows` / `heads`,
  the physically smaller model (`interop.pruning.shrink`; `--no-shrink` keeps it dense);
  config and tokenizer files come along;
- `OUT/pruning.json`: the rule, every targeted tensor's sparsity, the kept neurons or
  heads, parameter counts.

A `--modules` or `--exclude` regex that names no module the pattern can prune is an
error (a typo would otherwise prune more, or less, than meant). OUT is written beside
itself and takes its name only when complete; an existing OUT needs `--overwrite`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from interop.arguments import add_json
from interop.checkpoints.hf import HFCheckpointReader, read_hf_config
from interop.checkpoints.hf_write import write_hf_checkpoint
from interop.config import RunConfig
from interop.config_files import describe_error
from interop.errors import UserError
from interop.outputs import output_dir, write_json
from interop.prune_config import CALIBRATED, PATTERNS, PruneConfig, PruneRule, n_of_m
from interop.pruning.masks import Pruner, sparsity_report
from interop.pruning.plan import module_of, plan
from interop.pruning.shrink import REPORT, masked, pruning_report, shrink
from interop.report import emit
from jax_sft.prune.one_shot import calibrated_cut

METHODS = ("magnitude", "random", *CALIBRATED)  # movement needs training: a run config
FLAGS = {
    "method": "--method",
    "pattern": "--pattern",
    "sparsity": "--sparsity",
    "modules": "--modules",
    "excluded_modules": "--exclude",
    "seed": "--seed",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="one-shot pruning of a Hugging Face model")
    p.add_argument("model", help="Hugging Face model directory")
    p.add_argument("out", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--method", choices=METHODS, default="magnitude", help="how items rank")
    p.add_argument(
        "--sparsity",
        type=float,
        help="fraction of each unit removed, in [0, 1) (an N:M pattern implies it)",
    )
    p.add_argument(
        "--pattern",
        default="unstructured",
        help=f"{', '.join(PATTERNS)} (entries per tensor, entries across tensors, FFN "
        "neurons, attention heads) or N:M, e.g. 2:4 (N kept of every M inputs)",
    )
    p.add_argument(
        "--data",
        help="wanda/sparsegpt: calibration text (a dataset file or directory, any format "
        "training reads)",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=128,
        help="calibration sequences (wanda/sparsegpt)",
    )
    p.add_argument("--max-seq-len", type=int, default=512, help="tokens per calibration sequence")
    p.add_argument(
        "--modules",
        nargs="+",
        action="extend",
        default=[],
        metavar="REGEX",
        help="prune only modules whose HF name matches one of these (default: all)",
    )
    p.add_argument(
        "--exclude",
        nargs="+",
        action="extend",
        default=[],
        metavar="REGEX",
        help="never prune modules whose HF name matches one of these",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --method random")
    p.add_argument(
        "--no-shrink",
        action="store_true",
        help="rows/heads: keep the dense shapes (exact zeros) instead of a smaller model",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_json(p)
    p.set_defaults(run=run)


def prune_config(args: argparse.Namespace) -> PruneConfig:
    """The flags as a validated `prune` section; a bad value names its flag."""
    rule = {
        "method": args.method,
        "pattern": args.pattern,
        "excluded_modules": args.exclude,
    }
    if args.sparsity is not None:
        rule["sparsity"] = args.sparsity
    elif n_of_m(args.pattern) is None:
        raise UserError(f"--sparsity is needed with --pattern {args.pattern}")
    if args.method in CALIBRATED:
        if args.pattern not in ("unstructured",) and n_of_m(args.pattern) is None:
            raise UserError(
                f"--method {args.method} prunes entries: --pattern unstructured (each row "
                f"alike) or N:M, not {args.pattern}"
            )
        if not args.data:
            raise UserError(f"--method {args.method} needs calibration text: --data FILE")
    if args.modules:
        rule["modules"] = args.modules
    section = {"rules": [rule], "seed": args.seed}
    try:
        return RunConfig.model_validate({"prune": section}).prune
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][-1])
        _, message = describe_error({**error, "loc": ()})
        flag = FLAGS.get(field, f"prune.{field}")
        raise UserError(f"{flag} {error['input']}: {message} (prune.{field})") from None


def check_regexes(args: argparse.Namespace, hf_config: Mapping, shapes: Mapping) -> None:
    """Each --modules / --exclude regex must name a module the pattern can prune."""
    every = plan(
        PruneConfig(
            rules=[
                PruneRule(pattern=args.pattern, **({} if n_of_m(args.pattern) else {"sparsity": 0}))
            ]
        ),
        hf_config,
        shapes,
    )
    modules = sorted({module_of(name) for unit in every for name in unit.ranked})
    for flag, regexes in (("--modules", args.modules), ("--exclude", args.exclude)):
        for regex in regexes:
            if not any(re.search(regex, module) for module in modules):
                raise UserError(
                    f"{flag} {regex!r}: matches no module the {args.pattern} pattern prunes "
                    f"(e.g. {modules[0]})"
                )
    kept = [
        module
        for module in modules
        if any(re.search(regex, module) for regex in args.modules or [""])
        and not any(re.search(regex, module) for regex in args.exclude)
    ]
    if not kept:
        raise UserError(f"--exclude {' '.join(args.exclude)}: leaves no module to prune")


def run(args: argparse.Namespace) -> int:
    model, out = Path(args.model), Path(args.out)
    cfg = prune_config(args)
    hf_config = read_hf_config(model)
    with HFCheckpointReader(model) as reader:
        shapes = {name: reader.shape(name) for name in reader.names()}
        check_regexes(args, hf_config, shapes)
        pruner = Pruner(cfg, hf_config, shapes)
        with output_dir(out, args.overwrite) as tmp:
            tensors = dict(reader)
            if args.method in CALIBRATED:
                masks = calibrated_cut(model, hf_config, tensors, pruner, args)
            else:
                masks = pruner.cut(0, tensors, pruner.initial_masks())
            if args.pattern in ("rows", "heads") and not args.no_shrink:
                config, written, notes = shrink(hf_config, tensors, pruner, masks)
            else:
                config, written, notes = dict(hf_config), masked(tensors, masks), []
            (tmp / "hf").mkdir()
            write_hf_checkpoint(tmp / "hf", written.items(), config, tokenizer_src=model)
            counts = {
                "parameters_before": _count(tensors),
                "parameters_after": _count(written),
            }
            shrunk = config != hf_config
            extra = {"model": str(model), **counts}
            if args.method in CALIBRATED:
                extra["calibration"] = {
                    "data": args.data,
                    "samples": args.calibration_samples,
                    "max_seq_len": args.max_seq_len,
                }
            report = pruning_report(pruner, masks, shrunk=shrunk, notes=notes, extra=extra)
            write_json(tmp / REPORT, report)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    report = sparsity_report(masks)
    zeros = sum(t["zeros"] for t in report.values())
    size = sum(t["size"] for t in report.values())
    summary = {
        "model": str(model),
        "out": str(out),
        "hf": str(out / "hf"),
        "report": str(out / REPORT),
        "method": args.method,
        "pattern": args.pattern,
        "sparsity": cfg.rules[0].sparsity,
        "shrunk": shrunk,
        "notes": notes,
        **counts,
        "zeros": zeros,
        "targeted": size,
        "tensors": {name: t["sparsity"] for name, t in report.items()},
    }
    kind = "shrunk" if shrunk else "dense with exact zeros"
    lines = [
        f"pruned {model} -> {out / 'hf'}: {args.method} {args.pattern} at "
        f"{cfg.rules[0].sparsity:g}: "
        f"{zeros:,} of {size:,} entries of {len(report)} tensors removed ({zeros / size:.1%})",
        f"parameters {counts['parameters_before']:,} -> {counts['parameters_after']:,} ({kind})",
    ]
    emit(lines, summary, args.json)
    return 0


def _count(tensors: Mapping[str, np.ndarray]) -> int:
    return sum(int(np.size(value)) for value in tensors.values())
