"""Two processes of 4 virtual CPU devices each train like one process with 8 devices."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from train_fixtures import run_config

from interop.config_files import dump_config
from interop.processes import with_cpu_devices
from jax_sft.train.run import make_engine, train

PARALLEL = {"data": 8, "zero_stage": 3}
SETTINGS = dict(
    parallel=PARALLEL,
    train={"micro_batch_size": 1, "max_steps": 5, "save_every": 5, "log_every": 1},
    optim={"eps": 1e-6},  # see test_sharding: keeps Adam from magnifying summation order
)


def losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


@pytest.mark.multiprocess
def test_two_processes_match_one_process_and_restore_in_one(tiny_base, tmp_path):
    single = run_config(tiny_base, tmp_path / "single", **SETTINGS)
    train(single)

    multi = run_config(tiny_base, tmp_path / "multi", **SETTINGS)
    config = tmp_path / "multi.yaml"
    config.write_text(dump_config(multi))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jax_sft.cli",
            "launch",
            "-n",
            "2",
            "--cpu-devices",
            "4",
            "--",
            "train",
            str(config),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # printed by process 0 only
    assert summary["steps"] == 5
    want, got = losses(tmp_path / "single"), losses(tmp_path / "multi")
    assert len(got) == 5 and np.max(np.abs(got - want) / want) <= 1e-6

    restored = make_engine(run_config(tiny_base, tmp_path / "multi", **SETTINGS))
    assert restored.restore_latest() == 5
    reference = make_engine(run_config(tiny_base, tmp_path / "single", **SETTINGS))
    reference.restore_latest()
    for a, b in zip(
        jax.tree.leaves(restored.state["params"]),
        jax.tree.leaves(reference.state["params"]),
        strict=True,
    ):
        assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-6


def test_a_device_count_for_child_processes_keeps_the_other_xla_flags():
    # What `launch --cpu-devices` and parity's JAX child set: a user's flags stay.
    flags = "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/d"
    assert with_cpu_devices(flags, 4).split() == [
        "--xla_dump_to=/tmp/d",
        "--xla_force_host_platform_device_count=4",
    ]
    assert with_cpu_devices("", 2) == "--xla_force_host_platform_device_count=2"
