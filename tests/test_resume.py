"""Resume after SIGKILL during a checkpoint write reproduces the uninterrupted run exactly."""

import json
import subprocess
import sys

import pytest
from train_fixtures import run_config

from jax_sft.train.run import train

KILL_DURING_SAVE = """
import json, os, signal, sys
from jax_sft.train import checkpointing
original = checkpointing.Checkpoints.save
def save(self, step, state, record, tag=None):
    original(self, step, state, record, tag)  # the asynchronous write has begun
    if step == 15:
        os.kill(os.getpid(), signal.SIGKILL)
checkpointing.Checkpoints.save = save
from interop.config import RunConfig
from jax_sft.train.run import train
train(RunConfig.model_validate(json.loads(sys.argv[1])))
"""


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.multiprocess
def test_kill_during_checkpoint_then_resume_matches_straight_run(tiny_base, tmp_path):
    settings = dict(train={"max_steps": 20, "save_every": 5, "log_every": 1, "keep_checkpoints": 5})
    straight = run_config(tiny_base, tmp_path / "straight", **settings)
    train(straight)

    interrupted = run_config(tiny_base, tmp_path / "killed", **settings)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, interrupted.model_dump_json(by_alias=True)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    # A new run works beside its directory until it completes.
    staged = tmp_path / ".killed.partial"
    assert not (tmp_path / "killed").exists()
    steps_written = sorted(p.name for p in (staged / "checkpoints").iterdir())
    assert "15" not in steps_written and {"5", "10"} <= set(steps_written)
    assert max(losses(staged)) == 15  # it had logged past its last checkpoint

    summary = train(interrupted)
    assert summary["steps"] == 20 and not staged.exists()
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    rows = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_loss" in r][:1] == [0]  # step 0's eval once
    assert sum(1 for r in rows if r["step"] == 0) == 1
    assert sorted(losses(tmp_path / "straight")) == list(range(1, 21))
