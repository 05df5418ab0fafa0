"""Comparing two training runs of the same config: per-step losses and final weights.

Both backends write `metrics.jsonl` (one row per step with `loss`) and an `hf/` export;
this module reads only those files, so it judges the runs by what they wrote, not by
anything either backend reports about itself. Relative loss differences divide by the
reference (torch) loss; parameter differences are per HF tensor, the worst one named.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from interop.checkpoints.hf import HFCheckpointReader


def step_losses(metrics: Path, key: str = "loss") -> dict[int, float]:
    """{step: training loss} (or another per-step metric, `key`) from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return {int(r["step"]): float(r[key]) for r in rows if key in r}


def final_eval(metrics: Path) -> dict | None:
    """The last evaluation row of a run's metrics.jsonl (None if it evaluated nothing)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "eval_loss" in r]
    return evals[-1] if evals else None


def compare_losses(ours: dict[int, float], reference: dict[int, float]) -> dict:
    """Per-step losses of both runs with absolute and relative differences."""
    steps = sorted(set(ours) & set(reference))
    a = np.array([ours[s] for s in steps], np.float64)
    b = np.array([reference[s] for s in steps], np.float64)
    abs_diff = np.abs(a - b)
    rel_diff = abs_diff / np.maximum(np.abs(b), 1e-12)
    return {
        "steps": steps,
        "loss_jax": a.tolist(),
        "loss_torch": b.tolist(),
        "abs_diff": abs_diff.tolist(),
        "rel_diff": rel_diff.tolist(),
        "max_abs_loss_diff": float(abs_diff.max()) if steps else None,
        "max_rel_loss_diff": float(rel_diff.max()) if steps else None,
    }


def compare_params(a: Path, b: Path) -> dict:
    """Largest |a - b| over the tensors of two HF directories, and which tensor it is;
    how many entries are exactly zero on one side only (pruning masks must agree)."""
    worst, worst_name, per_tensor, zeros = -1.0, None, {}, 0
    with HFCheckpointReader(a) as ra, HFCheckpointReader(b) as rb:
        names = sorted(set(ra.names()) & set(rb.names()))
        missing = sorted(set(ra.names()) ^ set(rb.names()))
        for name in names:
            x = np.asarray(ra.get(name), np.float64)
            y = np.asarray(rb.get(name), np.float64)
            diff = float(np.abs(x - y).max()) if x.shape == y.shape else float("inf")
            if x.shape == y.shape:
                zeros += int(np.sum((x == 0) != (y == 0)))
            per_tensor[name] = diff
            if diff > worst:
                worst, worst_name = diff, name
    return {
        "final_max_abs_param_diff": worst,
        "worst_tensor": worst_name,
        "tensors_only_in_one": missing,
        "zero_mismatches": zeros,
        "per_tensor": per_tensor,
    }


def plot(
    dst: Path,
    steps: Sequence[int],
    jax_loss: Sequence[float],
    torch_loss: Sequence[float],
    title: str,
) -> None:
    """parity.png: both loss curves above, their relative difference below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = np.asarray(jax_loss), np.asarray(torch_loss)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), dpi=120, sharex=True)
    top.plot(steps, b, label="torch_ref (DeepSpeed)", linewidth=2.5, alpha=0.6)
    top.plot(steps, a, "--", label="jax_sft", linewidth=1.2)
    top.set_ylabel("training loss")
    top.set_title(title)
    top.legend()
    top.grid(alpha=0.3)
    bottom.semilogy(steps, np.maximum(np.abs(a - b) / np.abs(b), 1e-12))
    bottom.set_ylabel("|jax - torch| / torch")
    bottom.set_xlabel("optimizer step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(dst)
    plt.close(fig)
