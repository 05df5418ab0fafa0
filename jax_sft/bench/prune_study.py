"""`jax-sft bench --prune`: what pruning costs in quality and gains in size, per method.

Every run starts from the same base (the config's, pretrained once and cached) and
trains on the same batches with the same schedule: dense fine-tuning, then masked
fine-tuning after a cut at step 0 by magnitude, Wanda and SparseGPT (50% and 70%
unstructured, 2:4) and by FFN rows (25%, 50%; magnitude, the calibrated methods prune
entries), each without and with SquareHead distillation. The eval loss at step 0 is the
one-shot model's (the cut already applied; SparseGPT's repaired weights), the last one
the fine-tuned model's. Size: the exported model as safetensors, and for unstructured
and N:M runs also in the sparse-bitmask layout (`jax-sft convert --to sparse`); rows
runs export a physically smaller model. The table goes to `pruning-study.md`, the bars
to `pruning-study.png`, the figures to `pruning-study.json`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from interop.checkpoints.hf import HFCheckpointReader, read_hf_config
from interop.checkpoints.sparse_bitmask import stored_bytes, write_sparse
from interop.config import RunConfig, with_sections
from interop.plots import grouped_bars
from jax_sft.train.base_model import ensure_base
from jax_sft.train.run import train

METHODS = ("magnitude", "wanda", "sparsegpt")
CUTS = (("50%", {"sparsity": 0.5}), ("70%", {"sparsity": 0.7}), ("2:4", {"pattern": "2:4"}))
ROWS = (0.25, 0.5)


def variants() -> list[tuple[str, dict]]:
    """(name, the `prune` section) of every pruned run of the study."""
    rules = [
        (f"{method} {tag}", {"method": method, "pattern": "unstructured", **cut})
        for tag, cut in CUTS
        for method in METHODS
    ]
    rules += [(f"rows {s:.0%}", {"pattern": "rows", "sparsity": s}) for s in ROWS]
    return [
        (name + (" + SquareHead" if distill != "none" else ""), {**rule, "distill": distill})
        for name, rule in rules
        for distill in ("none", "squarehead")
    ]


def _sparse_bytes(hf: Path) -> int:
    """Bytes of `hf` in the sparse-bitmask layout."""
    with tempfile.TemporaryDirectory() as tmp, HFCheckpointReader(hf) as reader:
        write_sparse(Path(tmp), iter(reader), read_hf_config(hf))
        return stored_bytes(tmp)


def run_variant(cfg: RunConfig, name: str) -> dict:
    """Train one run to the end; its figures."""
    out = Path(cfg.train.output_dir)
    train(cfg, overwrite=True)
    evals = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "eval_loss" in line
    ]
    row = {
        "name": name,
        "one_shot": evals[0]["eval_loss"],
        "fine_tuned": evals[-1]["eval_loss"],
        "hf_bytes": stored_bytes(out / "hf"),
    }
    report = out / "pruning.json"
    if report.exists():
        tensors = json.loads(report.read_text())["tensors"].values()
        row["sparsity"] = sum(t["zeros"] for t in tensors) / sum(t["size"] for t in tensors)
        if cfg.prune.rules[0].pattern != "rows":  # those ship smaller instead
            row["sparse_bytes"] = _sparse_bytes(out / "hf")
    return row


def study(cfg: RunConfig, work: Path) -> list[dict]:
    """The dense run and every pruned run on `cfg`'s base model and data, in `work`."""
    if cfg.model.path is None:
        cfg = with_sections(cfg, {"model": {"path": str(ensure_base(cfg)), "tiny": None}})
    rows = [
        run_variant(with_sections(cfg, {"train": {"output_dir": str(work / "dense")}}), "dense")
    ]
    for name, prune in variants():
        slug = "".join(c if c.isalnum() else "-" for c in name)
        sections = {"prune": prune, "train": {"output_dir": str(work / slug)}}
        rows.append(run_variant(with_sections(cfg, sections), name))
    return rows


def table(rows: list[dict]) -> str:
    """The Markdown table of a study."""
    dense = rows[0]
    lines = [
        "| run | zeros (targeted) | eval loss one-shot | after fine-tuning | vs dense | "
        "safetensors bytes | sparse-bitmask bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        zeros = f"{r['sparsity']:.1%}" if "sparsity" in r else "-"
        packed = (
            f"{r['sparse_bytes']:,}" if "sparse_bytes" in r and "rows" not in r["name"] else "-"
        )
        lines.append(
            f"| {r['name']} | {zeros} | {r['one_shot']:.4f} | {r['fine_tuned']:.4f} | "
            f"{r['fine_tuned'] - dense['fine_tuned']:+.4f} | {r['hf_bytes']:,} | {packed} |"
        )
    return "\n".join(lines) + "\n"


def write_docs(rows: list[dict], docs: Path, command: str, base: str) -> None:
    """pruning-study.{md,png,json} in `docs`."""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "pruning-study.json").write_text(json.dumps(rows, indent=1) + "\n")
    grouped_bars(
        docs / "pruning-study.png",
        [r["name"] for r in rows],
        {
            "one-shot (step 0)": [r["one_shot"] for r in rows],
            "after masked fine-tuning": [r["fine_tuned"] for r in rows],
        },
        title=f"eval loss on the demo SFT set, {base}",
        ylabel="eval loss",
    )
    text = (
        "# Pruning study\n\n"
        f"Produced by `{command}` on {base}; figures in `pruning-study.json`, bars in "
        "`pruning-study.png`.\n\n" + table(rows)
    )
    (docs / "pruning-study.md").write_text(text)
