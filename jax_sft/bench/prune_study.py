"""`jax-sft bench --prune`: what pruning costs in quality and gains in size, per method.

The setting of Kurtic et al. (2023): a dense model fine-tuned on the task is pruned and
fine-tuned again under its mask. First the config's run fine-tunes its base densely (the
model D); every other run starts from D and trains `RECOVERY` epoch(s) more on the same
data with the same schedule: "dense, continued" without pruning (the reference), then
after a cut at step 0 by magnitude, Wanda and SparseGPT (50% and 70% unstructured, 2:4)
and by FFN rows (25%, 50%; magnitude: the calibrated methods prune entries), each
without and with SquareHead distillation from D. The eval loss at step 0 is the pruned
D's, one-shot (SparseGPT's repaired weights); the last one after recovery. Size: the
export as safetensors, and for unstructured and N:M runs also in the sparse-bitmask
layout (`jax-sft convert --to sparse`); rows runs export a physically smaller model. The
table goes to `pruning-study.md`, the bars to `pruning-study.png`, the figures to
`pruning-study.json`.
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
RECOVERY = 1  # epochs of fine-tuning after the cut
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
    """The dense run, its continuation and every pruned run on `cfg`'s base and data."""
    if cfg.model.path is None:
        cfg = with_sections(cfg, {"model": {"path": str(ensure_base(cfg)), "tiny": None}})
    dense = with_sections(cfg, {"train": {"output_dir": str(work / "dense")}})
    rows = [run_variant(dense, "dense (base -> D)")]
    tuned = {"model": {"path": str(work / "dense" / "hf")}, "train": {"epochs": RECOVERY}}
    later = [("dense, continued", None), *variants()]
    for name, prune in later:
        slug = "".join(c if c.isalnum() else "-" for c in name)
        sections = {**tuned, "train": {**tuned["train"], "output_dir": str(work / slug)}}
        if prune is not None:
            sections["prune"] = prune
        rows.append(run_variant(with_sections(cfg, sections), name))
    return rows


def table(rows: list[dict]) -> str:
    """The Markdown table of a study."""
    reference = rows[1]  # dense, continued
    lines = [
        "| run | zeros (targeted) | eval loss at step 0 | after | vs dense, continued | "
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
            f"{r['fine_tuned'] - reference['fine_tuned']:+.4f} | {r['hf_bytes']:,} | {packed} |"
        )
    return "\n".join(lines) + "\n"


def write_docs(rows: list[dict], docs: Path, command: str, base: str) -> None:
    """pruning-study.{md,png,json} in `docs`."""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "pruning-study.json").write_text(json.dumps(rows, indent=1) + "\n")
    grouped_bars(
        docs / "pruning-study.png",
        [r["name"] for r in rows[1:]],
        {
            "at step 0 (pruned one-shot)": [r["one_shot"] for r in rows[1:]],
            f"after {RECOVERY} epoch(s) under the mask": [r["fine_tuned"] for r in rows[1:]],
        },
        title=f"eval loss of the fine-tuned {base}, pruned",
        ylabel="eval loss",
    )
    text = (
        "# Pruning study\n\n"
        f"Produced by `{command}` on {base}; figures in `pruning-study.json`, bars in "
        "`pruning-study.png`.\n\n" + table(rows)
    )
    (docs / "pruning-study.md").write_text(text)
