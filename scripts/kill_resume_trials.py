"""kill -9 at random points of a run, then resume: is everything bit for bit the same?

    .venv/bin/python scripts/kill_resume_trials.py [WORK_DIR] [--trials 20] [--steps 120]

A tiny Llama (no download) trains on the bundled SFT set with a checkpoint after every
step. One run goes straight through; each trial starts the same run, kills it with
SIGKILL, then runs `jax-sft train` again until it completes. The kill falls at a random
moment (most trials), right after a checkpoint's asynchronous write began (mid-save), or
after the first tensor file of the final export was written (mid-export). A trial passes
when its `metrics.jsonl` (every field but the wall-clock `tokens_per_s`) and its final
`hf/` weights equal the straight run's exactly. Prints one line per trial and a summary.
About 15 minutes on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

CONFIG = {
    "model": {"tiny": "tiny-llama", "pretrain": {"steps": 0, "vocab_size": 320}},
    "data": {
        "sources": [{"path": "configs/data/demo_sft/train.jsonl"}],
        "eval_sources": [{"path": "configs/data/demo_sft/eval.jsonl"}],
        "max_seq_len": 64,
    },
    "train": {"micro_batch_size": 4, "save_every": 1, "log_every": 1, "eval_every": 40},
    "optim": {"learning_rate": 1e-3},
    "logging": {"progress_bar": False},
}
# Run in the child: SIGKILL right after an asynchronous checkpoint write began at step
# KILL_AT, or right after the final export wrote its first tensor file.
PATCHED = """
import os, signal, sys
mode, at = sys.argv[1], int(sys.argv[2])
if mode == "save":
    from jax_sft.train import checkpointing
    original = checkpointing.Checkpoints.save
    def save(self, step, state, record, tag=None):
        path = original(self, step, state, record, tag)
        if step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    checkpointing.Checkpoints.save = save
else:
    from interop.checkpoints import hf
    original = hf.write_tensors
    def write_tensors(tensors, path):
        original(tensors, path)
        os.kill(os.getpid(), signal.SIGKILL)
    hf.write_tensors = write_tensors
from jax_sft import cli
sys.exit(cli.main(sys.argv[3:]))
"""


def train(config: Path, out: Path) -> list[str]:
    return ["train", str(config), "--set", f"train.output_dir={out}"]


def record(out: Path) -> tuple[list[dict], str]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("tokens_per_s", None)
    weights = hashlib.sha256()
    for file in sorted((out / "hf").glob("*.safetensors")):
        weights.update(file.read_bytes())
    return rows, weights.hexdigest()


def jax_sft(*argv: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "jax_sft.cli", *argv]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("work", nargs="?", default="out/kill-trials")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    work, rng = Path(args.work).absolute(), random.Random(args.seed)
    work.mkdir(parents=True, exist_ok=True)
    config = work / "run.json"
    train_section = {**CONFIG["train"], "max_steps": args.steps}
    config.write_text(json.dumps({**CONFIG, "train": train_section}))
    started = time.monotonic()
    assert jax_sft(*train(config, work / "straight"), "--overwrite").wait() == 0
    straight, took = record(work / "straight"), time.monotonic() - started
    print(f"straight run: {args.steps} steps in {took:.0f} s", flush=True)
    passed = 0
    for trial in range(args.trials):
        out = work / f"trial-{trial}"
        mode = "save" if trial % 10 == 8 else "export" if trial % 10 == 9 else "random"
        if mode == "random":
            delay = rng.uniform(3.0, took)
            run = jax_sft(*train(config, out))
            time.sleep(delay)
            run.send_signal(signal.SIGKILL)
            run.wait()
            where = f"after {delay:.1f} s" + ("" if run.returncode < 0 else " (it had finished)")
        else:
            at = rng.randrange(1, args.steps + 1)
            argv = [sys.executable, "-c", PATCHED, mode, str(at), *train(config, out)]
            assert subprocess.run(argv, capture_output=True).returncode == -signal.SIGKILL
            where = f"mid-save at step {at}" if mode == "save" else "mid-export"
        resumed = jax_sft(*train(config, out))
        code = resumed.wait()
        same = code == 0 and record(out) == straight
        passed += same
        status = "identical" if same else f"DIFFERENT (exit {code})"
        print(f"trial {trial}: killed {where}; resumed: {status}", flush=True)
    print(f"{passed} of {args.trials} trials resumed to the straight run's metrics and weights")


if __name__ == "__main__":
    main()
