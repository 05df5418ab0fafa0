"""What a run's data costs at scale: a 2-step run on 1,000 rows beside one on 1,000,000.

The rows are prompt/chosen pairs (DeepSpeed-Chat's format) of pydoc sentences, made by
`write_rows` (deterministic; about 520 bytes a row, as a typical SFT set). Each size is
run twice with its own empty cache directory: the first run tokenizes into the cache,
the second maps it. Per run: the seconds from the process's start to its first logged
step (imports, setup, data, compilation and the step itself), the process's peak RSS
(`wait4`), and for a tokenizing run the rows/s the cache reports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from interop.config_files import load_config
from interop.data.tokenizer import pydoc_texts
from interop.errors import BackendError
from jax_sft.train.base_model import ensure_base

SIZES = (1_000, 1_000_000)
MAX_SEQ_LEN = 512


def write_rows(path: Path, n: int, seed: int = 0) -> Path:
    """n prompt/chosen JSON lines of pydoc sentences (prompt 1-3, chosen 2-6 of them)."""
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", " ".join(pydoc_texts()))]
    sentences = np.array([s for s in sentences if 20 <= len(s) <= 120])
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with open(tmp, "w") as f:
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            picks = rng.integers(0, len(sentences), (m, 8))
            counts = rng.integers(1, 4, m), rng.integers(2, 7, m)
            for row, a, b in zip(picks, *counts, strict=True):
                prompt, chosen = " ".join(sentences[row[:a]]), " ".join(sentences[row[a : a + b]])
                f.write(json.dumps({"prompt": prompt, "chosen": chosen}) + "\n")
    os.replace(tmp, path)
    return path


def run_once(config: Path) -> dict:
    """One `jax-sft train` run: seconds to its first step, peak RSS, tokenizing rows/s."""
    out = Path(yaml.safe_load(config.read_text())["train"]["output_dir"])
    metrics = out / "metrics.jsonl"  # a new output directory is written in place
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "jax_sft.cli", "train", str(config)]
    log = config.with_suffix(".stderr")
    with open(log, "w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        first_step = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if first_step is None and metrics.is_file() and metrics.stat().st_size:
                first_step = time.monotonic() - started
            if pid:
                break
            time.sleep(0.02)
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise BackendError(f"data-scale run of {config} failed:\n{text.strip()[-2000:]}")
    rate = re.findall(r"tokenized \S+: [\d,]+ rows, ([\d,]+) rows/s", text)
    return {
        "first_step_s": first_step,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "tokenize_rows_per_s": int(rate[-1].replace(",", "")) if rate else None,
    }


def benchmark(work: Path, sizes: tuple[int, ...] = SIZES) -> dict:
    """Two runs (tokenizing, then mapping) of each size; the summary by size."""
    base = ensure_base(
        load_config(
            None,
            ["model.pretrain.steps=0", f"train.output_dir={work / 'model'}"],
        )
    )
    results: dict[int, dict] = {}
    for n in sizes:
        data = work / f"rows-{n}.jsonl"
        if not data.exists():
            write_rows(data, n)
        cache = work / f"cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        cfg = {
            "model": {"path": str(base)},
            "data": {
                "sources": [{"path": str(data)}],
                "max_seq_len": MAX_SEQ_LEN,
                "cache_dir": str(cache),
            },
            "train": {"output_dir": str(work / "runs" / str(n)), "max_steps": 2, "log_every": 1},
        }
        config = work / f"rows-{n}.yaml"
        config.write_text(yaml.safe_dump(cfg))
        results[n] = {"first": run_once(config), "cached": run_once(config)}
    return {"sizes": list(sizes), "max_seq_len": MAX_SEQ_LEN, "results": results}


def table(summary: dict) -> str:
    """A markdown table of the summary, one line per size and run."""
    lines = [
        "| rows | run | to first step, s | peak RSS, MB | tokenizing rows/s |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for n, runs in summary["results"].items():
        for name, r in runs.items():
            rate = f"{r['tokenize_rows_per_s']:,}" if r["tokenize_rows_per_s"] else ""
            first = f"{r['first_step_s']:.1f}" if r["first_step_s"] is not None else "n/a"
            lines.append(f"| {int(n):,} | {name} | {first} | {r['peak_rss_mb']:,.0f} | {rate} |")
    return "\n".join(lines) + "\n"
