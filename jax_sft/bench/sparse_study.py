"""`jax-sft bench --sparse`: how much of full fine-tuning's gain each way of training few
parameters keeps, at matched trainable-parameter budgets, on one base model and SFT set.

Every variant starts from the same base (the config's, pretrained once and cached) and
trains on the same batches with the same schedule and step count; only what trains, and
its learning rate (`--sparse-lr`, since deltas and LoRA factors start at zero and want
larger steps than full fine-tuning), differ. Per variant: eval loss before and after,
the fraction of the dense run's eval-loss drop it reaches, trainable parameters,
optimizer-state bytes (the state pytree) and the train step's per-device bytes from
XLA's `memory_analysis()` (arguments + outputs + temporaries - aliased). The table goes
to `sparse-study.md`, the curves to `sparse-study.png`, the figures to `sparse-study.json`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

from interop.config import RunConfig, with_sections
from interop.plots import loss_curves
from jax_sft.models import registry
from jax_sft.sparse.select import lora_width, targets
from jax_sft.train.base_model import ensure_base
from jax_sft.train.run import make_engine, prepare_output

METHODS = ("random", "magnitude", "fisher", "lt-sft", "spiel")
DENSITIES = (0.01, 0.05)


def lora_budget(shapes: dict, target: list[str], density: float) -> tuple[int, list[str]]:
    """The LoRA rank whose trainable count is nearest `density` of the targeted weights
    (at least 1), and the module names that put LoRA on the same weights."""
    chosen = targets(shapes, target)
    size = sum(math.prod(shapes[p]) for p in chosen)
    width = sum(lora_width(shapes[p]) for p in chosen)
    modules = sorted({p.split(".")[-2] for p in chosen})
    return max(1, round(density * size / width)), modules


def variants(sparse_lr: float, shapes: dict, target: list[str]) -> list[tuple[str, dict]]:
    """(name, config overrides by section) of every run in the study. "targeted 100%"
    trains every entry of the targeted weights (all but embeddings, head and norms) at
    the dense learning rate: the ceiling of what any subset of them can reach."""
    runs: list[tuple[str, dict]] = [
        ("dense", {}),
        ("targeted 100%", {"sparse": {"method": "random", "density": 1.0}}),
    ]
    for density in DENSITIES:
        tag = f"{density:.0%}"
        rank, modules = lora_budget(shapes, target, density)
        lora = {"rank": rank, "alpha": float(rank), "target_modules": modules}
        runs.append(
            (f"LoRA r={rank} ({tag})", {"lora": lora, "optim": {"learning_rate": sparse_lr}})
        )
        for method in METHODS:
            runs.append(
                (
                    f"{method} {tag}",
                    {
                        "sparse": {"method": method, "density": density},
                        "optim": {"learning_rate": sparse_lr},
                    },
                )
            )
    return runs


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def run_variant(cfg: RunConfig, name: str) -> dict:
    """Train one variant to the end; its figures and eval-loss curve."""
    out = Path(cfg.train.output_dir)
    prepare_output(out, overwrite=True, resume=False)
    engine = make_engine(cfg)
    memory = engine.train_step_memory()
    trained = engine.mode.trained(engine.state)
    row = {
        "name": name,
        "trainable": int(sum(x.size for x in jax.tree.leaves(trained))),
        "opt_state_bytes": _nbytes(engine.state["opt_state"]),
        "train_step_bytes": memory["argument_size_in_bytes"]
        + memory["output_size_in_bytes"]
        + memory["temp_size_in_bytes"]
        - memory["alias_size_in_bytes"],
    }
    engine.fit()
    evals = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "eval_loss" in line
    ]
    row["curve"] = [(e["step"], e["eval_loss"]) for e in evals]
    row["eval_before"], row["eval_after"] = evals[0]["eval_loss"], evals[-1]["eval_loss"]
    return row


def study(cfg: RunConfig, work: Path, sparse_lr: float, evals: int = 12) -> list[dict]:
    """Every variant of the study on `cfg`'s base model and data, in `work`."""
    if cfg.model.path is None:
        cfg = with_sections(cfg, {"model": {"path": str(ensure_base(cfg)), "tiny": None}})
    probe = make_engine(cfg)
    total = probe.total_steps  # the same for every variant: same data, same batches
    shapes = registry.expected_shapes(probe.hf_config)
    del probe
    rows = []
    for name, sections in variants(sparse_lr, shapes, cfg.sparse.target):
        slug = "".join(c if c.isalnum() else "-" for c in name)
        train = {"output_dir": str(work / slug), "eval_every": max(1, total // evals)}
        rows.append(run_variant(with_sections(cfg, {**sections, "train": train}), name))
    dense_drop = rows[0]["eval_before"] - rows[0]["eval_after"]
    for row in rows:
        drop = row["eval_before"] - row["eval_after"]
        row["share_of_dense_drop"] = drop / dense_drop if dense_drop > 0 else math.nan
    return rows


def table(rows: list[dict], dense_params: int) -> str:
    """The Markdown table of a study."""
    lines = [
        "| run | trainable | % of model | optimizer state | train-step bytes | eval loss "
        "before → after | share of dense drop |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['trainable']:,} | {r['trainable'] / dense_params:.2%} | "
            f"{r['opt_state_bytes']:,} | {r['train_step_bytes']:,} | "
            f"{r['eval_before']:.4f} → {r['eval_after']:.4f} | "
            f"{r['share_of_dense_drop']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def write_docs(rows: list[dict], docs: Path, command: str) -> None:
    """sparse-study.{md,png,json} in `docs`."""
    docs.mkdir(parents=True, exist_ok=True)
    dense_params = rows[0]["trainable"]
    (docs / "sparse-study.json").write_text(json.dumps(rows, indent=1) + "\n")
    curves = {r["name"]: tuple(zip(*r["curve"], strict=True)) for r in rows}
    kinds = list(dict.fromkeys(r["name"].split()[0] for r in rows))
    styles = {
        r["name"]: {
            "color": f"C{kinds.index(r['name'].split()[0])}",
            "linestyle": "--" if "(1%)" in r["name"] or r["name"].endswith(" 1%") else "-",
        }
        for r in rows
    }
    loss_curves(
        docs / "sparse-study.png",
        curves,
        title="eval loss on the demo SFT set (dashed: 1% budget, solid: 5%)",
        styles=styles,
    )
    text = (
        "# Sparse fine-tuning study\n\n"
        f"Produced by `{command}`; figures in `sparse-study.json`, curves in "
        "`sparse-study.png`.\n\n" + table(rows, dense_params)
    )
    (docs / "sparse-study.md").write_text(text)
