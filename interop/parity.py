"""Comparing two training runs of the same config: per-step losses and final weights.

Both backends write `metrics.jsonl` (one row per step with `loss`) and an `hf/` export;
this module reads only those files, so it judges the runs by what they wrote, not by
anything either backend reports about itself. Relative loss differences divide by the
reference (torch) loss; parameter differences are per HF tensor, the worst one named.

One kind of parameter is set apart: the attention key-projection bias of a family
without rotary positions (OPT, GPT-2). Adding a vector `b` to every key adds `q . b` to
all the scores of query `q`, a constant that softmax ignores, so no output depends on
`b` and its exact gradient is zero. What each framework computes for it is rounding
noise, which Adam normalises into steps of up to the learning rate, with no sign the two
agree on: its values drift apart as far as the learning rate allows without either model
computing anything different. Those entries are reported on their own
(`final_max_abs_invariant_diff`); the parameter verdict (`final_max_abs_param_diff`)
covers the entries the model's outputs depend on. Rotary families (Llama, Qwen2,
Mistral) keep their key bias in the verdict: the rotation turns `b` into a different
vector at every key position, so `q . R_j b` is no constant and the bias is trained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from interop.checkpoints.hf import HFCheckpointReader, read_hf_config


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


def output_invariant_entries(model_type: str, name: str, size: int) -> slice | None:
    """The entries of HF tensor `name` (`size` entries along its first axis) of a
    `model_type` model that no output depends on: OPT's key-projection bias, whole, and
    the middle third of GPT-2's fused query/key/value bias."""
    if model_type == "opt" and name.endswith(".self_attn.k_proj.bias"):
        return slice(0, size)
    if model_type == "gpt2" and name.endswith(".attn.c_attn.bias"):
        return slice(size // 3, 2 * size // 3)
    return None


def compare_params(a: Path, b: Path) -> dict:
    """Largest |a - b| over the entries of two HF directories that the outputs depend
    on, and which tensor it is; the largest over the entries they do not (OPT's and
    GPT-2's key-projection biases), and which tensors hold those; how many entries are
    exactly zero on one side only (pruning masks must agree)."""
    worst, worst_name, per_tensor, zeros = -1.0, None, {}, 0
    invariant: dict[str, float] = {}
    model_type = read_hf_config(a).get("model_type", "")
    with HFCheckpointReader(a) as ra, HFCheckpointReader(b) as rb:
        names = sorted(set(ra.names()) & set(rb.names()))
        missing = sorted(set(ra.names()) ^ set(rb.names()))
        for name in names:
            x = np.asarray(ra.get(name), np.float64)
            y = np.asarray(rb.get(name), np.float64)
            if x.shape != y.shape:
                diff = float("inf")
            else:
                zeros += int(np.sum((x == 0) != (y == 0)))
                gap = np.abs(x - y)
                entries = output_invariant_entries(model_type, name, x.shape[0]) if x.ndim else None
                if entries is not None:
                    invariant[name] = float(gap[entries].max())
                    gap[entries] = 0.0
                diff = float(gap.max())
            per_tensor[name] = diff
            if diff > worst:
                worst, worst_name = diff, name
    return {
        "final_max_abs_param_diff": worst,
        "worst_tensor": worst_name,
        "final_max_abs_invariant_diff": max(invariant.values(), default=None),
        "invariant_tensors": sorted(invariant),
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
