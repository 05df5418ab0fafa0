"""Training speed of both backends in one run: `jax-sft train` beside `torch-ref train`.

Each case (a Llama config and a sequence length; batch 8, fp32) is trained by the two
real commands, each in its own process, from the same HF directory (random weights, a
BPE tokenizer of 8,192 tokens) on the same rows (pydoc text, every row full). The
PyTorch side runs DeepSpeed ZeRO-0 with `transformers`' default SDPA attention
(`--attn_implementation sdpa`), what a PyTorch user gets, not the eager attention parity
runs use, in the environment `jax-sft bench` was started with: without the huge-page
tunable the `jax-sft` program adds for itself (`jax_sft.huge_pages`). Rounds alternate
the backends and cases so that the machine's drift falls on both; the ratio of medians
is `jax_over_torch_tokens_per_s`.

Per run: steady tokens/s (the median over the steps after the first two, read from the
run's `metrics.jsonl`, logged every step), the first step's seconds (compilation
included) and the steady step's, and the process's peak resident memory (`wait4`'s
ru_maxrss: the whole run, loading and export included). The machine's peak is a 4096^3
fp32 matmul through XLA, best of five, measured before every round; MFU is the one FLOP
formula (`models.flops`) over it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import yaml

from interop.config_files import load_config
from interop.data.tokenizer import pydoc_texts
from interop.errors import BackendError, UserError
from interop.plots import grouped_bars
from interop.tiny_configs import tiny_config
from jax_sft.huge_pages import environ_as_started
from jax_sft.models.flops import train_flops_per_token
from jax_sft.train.base_model import ensure_base

CASES = (("llama-10m", 256), ("llama-10m", 512), ("llama-50m", 256), ("llama-50m", 512))
BATCH, WARM = 8, 2
ROW_CHARS = 8000  # pydoc text per row: more than 512 tokens of the 8k-token BPE


def parse_case(text: str) -> tuple[str, int]:
    """ "llama-50m:512" -> ("llama-50m", 512); a UserError names a malformed one."""
    model, _, seq = text.partition(":")
    if not seq.isdigit() or int(seq) < 2:
        raise UserError(f"--cases: expected MODEL:SEQ like llama-50m:512, got {text!r}")
    tiny_config(model)
    return model, int(seq)


def matmul_peak(dtype: str = "float32", n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matmul through XLA, best of `repeats`."""
    a = jnp.ones((n, n), dtype)
    product = jax.jit(lambda x: x @ x)
    product(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def prepare(work: Path, model: str, seq: int, steps: int) -> Path:
    """The case's run config (written under `work`), its base model and data made once."""
    base_cfg = load_config(
        None,
        [
            f"model.tiny={model}",
            "model.pretrain.steps=0",
            "model.pretrain.vocab_size=8192",
            f"train.output_dir={work / model}",
        ],
    )
    base = ensure_base(base_cfg)
    data = work / "rows.jsonl"
    if not data.exists():
        text, rows = "\n\n".join(pydoc_texts()), []
        for start in range(0, len(text) - ROW_CHARS, ROW_CHARS):
            rows.append(json.dumps({"text": text[start : start + ROW_CHARS]}))
        data.write_text("\n".join(rows[:400]) + "\n")
    cfg = {
        "model": {"path": str(base)},
        "data": {"sources": [{"path": str(data), "format": "text"}], "max_seq_len": seq},
        "train": {
            "output_dir": str(work / "runs" / f"{model}-{seq}"),
            "micro_batch_size": BATCH,
            "max_steps": WARM + steps,
            "log_every": 1,
        },
        "logging": {"progress_bar": False},
    }
    path = work / f"{model}-{seq}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_once(backend: str, config: Path) -> dict:
    """One training run of `backend` ("jax" or "torch"): its step times and peak RSS."""
    if backend == "jax":
        cmd = [sys.executable, "-m", "jax_sft.cli", "train", str(config), "--overwrite"]
        env = dict(os.environ)
    else:
        cmd = [sys.executable, "-m", "torch_ref.cli", "train", str(config), "--overwrite"]
        cmd += ["--attn_implementation", "sdpa"]
        env = environ_as_started(os.environ)
    with open(os.devnull, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE, text=True, env=env)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise BackendError(f"{backend} run of {config} failed:\n{err.strip()[-2000:]}")
    out = Path(yaml.safe_load(config.read_text())["train"]["output_dir"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["tokens"] / r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    tokens = [r["tokens"] for r in rows if "tokens_per_s" in r]
    steady = seconds[WARM:]
    return {
        "first_step_s": seconds[0],
        "step_s": statistics.median(steady),
        "tokens_per_s": statistics.median(
            t / s for t, s in zip(tokens[WARM:], steady, strict=True)
        ),
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def benchmark(work: Path, rounds: int, steps: int, cases=CASES) -> dict:
    """Every case trained by both backends, `rounds` times, alternating; the summary."""
    work.mkdir(parents=True, exist_ok=True)
    configs = {case: prepare(work, *case, steps) for case in cases}
    runs: dict[tuple, dict[str, list]] = {case: {"jax": [], "torch": []} for case in cases}
    peaks = []
    for r in range(rounds):
        peaks.append(matmul_peak())
        for case in cases:
            order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
            for backend in order:
                runs[case][backend].append(run_once(backend, configs[case]))
    peak = statistics.median(peaks)
    rows = [_row(case, runs[case], peak) for case in cases]
    return {"peak_flops": peak, "peaks": peaks, "rounds": rounds, "rows": rows}


def _row(case: tuple[str, int], runs: dict[str, list], peak: float) -> dict:
    model, seq = case
    flops = train_flops_per_token(tiny_config(model), seq) * seq / (seq - 1)  # per scored token
    row = {"model": model, "seq": seq, "batch": BATCH}
    for backend, results in runs.items():
        for key in ("tokens_per_s", "step_s", "first_step_s", "peak_rss_mb"):
            row[f"{backend}_{key}"] = statistics.median(r[key] for r in results)
        row[f"{backend}_mfu"] = row[f"{backend}_tokens_per_s"] * flops / peak
    row["jax_over_torch_tokens_per_s"] = row["jax_tokens_per_s"] / row["torch_tokens_per_s"]
    return row


def table(summary: dict) -> str:
    lines = [
        "| model | seq | tokens/s (jax / torch) | ratio | MFU (jax / torch) | step s "
        "(jax / torch) | first step s (jax / torch) | peak RSS MB (jax / torch) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['model']} | {r['seq']} | {r['jax_tokens_per_s']:,.0f} / "
            f"{r['torch_tokens_per_s']:,.0f} | {r['jax_over_torch_tokens_per_s']:.2f}x | "
            f"{r['jax_mfu']:.0%} / {r['torch_mfu']:.0%} | {r['jax_step_s']:.2f} / "
            f"{r['torch_step_s']:.2f} | {r['jax_first_step_s']:.1f} / "
            f"{r['torch_first_step_s']:.1f} | {r['jax_peak_rss_mb']:,.0f} / "
            f"{r['torch_peak_rss_mb']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_figures(summary: dict, docs: Path) -> None:
    """docs/train-speed.png (tokens/s per case, both backends) and train-speed.json."""
    rows = summary["rows"]
    labels = [f"{r['model']} seq {r['seq']}" for r in rows]
    series = {
        "jax-sft": [r["jax_tokens_per_s"] for r in rows],
        "torch-ref (DeepSpeed, SDPA)": [r["torch_tokens_per_s"] for r in rows],
    }
    grouped_bars(
        docs / "train-speed.png",
        labels,
        series,
        title=f"Training tokens/s, batch {BATCH}, fp32",
        ylabel="tokens/s",
    )
    (docs / "train-speed.json").write_text(json.dumps(summary, indent=2) + "\n")
