"""A run trained by one framework continues in the other, through DeepSpeed checkpoints:
JAX 10 steps -> `jax-sft convert --to deepspeed` (ZeRO-2, 2 ranks, written by DeepSpeed)
-> `torch-ref train` on 2 processes, 10 more; DeepSpeed (torch-ref, ZeRO-2) 10 steps ->
`jax-sft train` with `train.resume_from`, 10 more (from the DeepSpeed checkpoint, or from
`convert --to orbax --with-optimizer`'s copy of it). Each continuation's losses are those
of an uninterrupted 20-step run within the parity bound."""

import json
import subprocess
import sys

import numpy as np
import pytest
from train_fixtures import run_config, write_config

from interop.checkpoints.deepspeed import DeepSpeedCheckpoint
from interop.processes import free_port
from jax_sft import cli
from torch_ref import cli as torch_ref_cli

pytestmark = pytest.mark.multiprocess
PARITY = 1e-4  # per-step relative loss difference, fp32 (DESIGN.md)
SETTINGS = dict(
    optim={"learning_rate": 1e-3, "weight_decay": 0.1, "grad_clip": 1.0},
    schedule={"type": "cosine", "warmup_steps": 3},
)
STEPS = {"max_steps": 20, "save_every": 10, "keep_checkpoints": 5}


def losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def torch_ref(capsys, argv: list[str], procs: int = 1, status: int = 0) -> str:
    """`torch-ref ARGV`'s stderr: in this process (as tests/test_torch_ref_train.py runs
    it), or under torchrun when `procs` > 1."""
    if procs == 1:
        capsys.readouterr()
        code = torch_ref_cli.main(argv)
        err = capsys.readouterr().err
        assert code == status, err[-3000:]
        return err
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
    argv = [*launch, "--master_port", str(free_port()), "-m", "torch_ref.cli", *argv]
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == status, done.stderr[-3000:]
    return done.stderr


def jax_sft(capsys, *argv: str) -> tuple[str, str]:
    """`jax-sft ARGV` in this process (JAX is loaded already); its (stdout, stderr)."""
    capsys.readouterr()
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    return out, err


def config(tmp_path, base, name, procs=1, **train):
    """The run's YAML: 20 steps, ZeRO-2, a global batch of 4 rows however many ranks."""
    cfg = run_config(
        base,
        tmp_path / name,
        train={**STEPS, "micro_batch_size": 4 // procs, **train},
        parallel={"data": procs, "zero_stage": 2},
        **SETTINGS,
    )
    folder = tmp_path / f"{name}-config"
    folder.mkdir()
    return str(write_config(folder, cfg))


def test_jax_to_deepspeed_to_torch_and_back(tiny_base, tmp_path, capsys):
    jax_run = config(tmp_path, tiny_base, "jax")
    jax_sft(capsys, "train", jax_run)
    torch_run = config(tmp_path, tiny_base, "torch")
    torch_ref(capsys, ["train", torch_run])
    straight_jax, straight_torch = losses(tmp_path / "jax"), losses(tmp_path / "torch")

    # JAX's step 10, written by DeepSpeed as a 2-rank ZeRO-2 run: the same numbers
    ds, step_dir = tmp_path / "ds-from-jax", tmp_path / "jax" / "checkpoints" / "10"
    argv = ["convert", str(step_dir), str(ds), "--to", "deepspeed", "--config", jax_run]
    out, _ = jax_sft(capsys, *argv, "--world-size", "2")
    assert "(deepspeed, ZeRO-2, 2 rank(s))" in out
    written = DeepSpeedCheckpoint(ds)
    assert (written.stage, written.world_size, written.step, written.global_steps) == (2, 2, 10, 10)
    for name, (weight, mu, nu) in _jax_state_in_hf_names(step_dir).items():
        assert np.array_equal(written.get(name), weight), name
        got_mu, got_nu = written.moments_of(name)
        assert np.array_equal(got_mu, mu) and np.array_equal(got_nu, nu), name

    # ... continued by torch-ref on 2 processes
    resumed = config(tmp_path, tiny_base, "torch-from-jax", procs=2, resume_from=str(ds))
    err = torch_ref(capsys, ["train", resumed], procs=2)
    assert f"resuming from step 10 ({ds}/step_10)" in err
    _within_parity(losses(tmp_path / "torch-from-jax"), straight_jax)

    # torch-ref's own step 10 continued by jax-sft
    step_10 = tmp_path / "torch" / "checkpoints" / "step_10"
    resumed = config(tmp_path, tiny_base, "jax-from-torch", resume_from=str(step_10))
    _, err = jax_sft(capsys, "train", resumed)
    assert f"resuming from step 10 ({step_10})" in err
    _within_parity(losses(tmp_path / "jax-from-torch"), straight_torch)

    # ... or through an Orbax model that carries the Adam state: the same run, bit for bit
    carried = tmp_path / "carried"
    jax_sft(capsys, "convert", str(step_10), str(carried), "--to", "orbax", "--with-optimizer")
    resumed = config(tmp_path, tiny_base, "jax-from-orbax", resume_from=str(carried))
    jax_sft(capsys, "train", resumed)
    assert losses(tmp_path / "jax-from-orbax") == losses(tmp_path / "jax-from-torch")


def _within_parity(continued: dict, straight: dict) -> None:
    assert sorted(continued) == list(range(11, 21))
    rel = max(abs(continued[s] - straight[s]) / abs(straight[s]) for s in continued)
    assert rel <= PARITY, rel
    assert straight[20] < straight[11]  # it learns: the comparison is not of frozen runs


def _jax_state_in_hf_names(step_dir) -> dict:
    """{HF name: (weight, exp_avg, exp_avg_sq)} of a jax-sft training checkpoint."""
    import orbax.checkpoint as ocp

    from interop.checkpoints.hf import read_hf_config
    from jax_sft.checkpoints.orbax_io import flatten
    from jax_sft.models import registry

    table = registry.name_table(read_hf_config(step_dir.parents[1] / "hf"))
    with ocp.PyTreeCheckpointer() as ckpt:
        tree = ckpt.restore((step_dir / "state").absolute())
    adam = next(part for part in tree["opt_state"] if isinstance(part, dict))
    trees = [flatten(tree["params"]), flatten(adam["mu"]), flatten(adam["nu"])]
    out = {}
    for path in trees[0]:
        name, transform = table.to_hf_name(path)
        out[name] = tuple(transform.to_hf(np.asarray(t[path])) for t in trees)
    return out


def test_resuming_a_zero_checkpoint_at_another_world_size_is_one_line(tiny_base, tmp_path, capsys):
    ds = tmp_path / "ds" / "step_3"
    ds.mkdir(parents=True)
    for rank in range(2):
        (ds / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    (ds / "mp_rank_00_model_states.pt").write_bytes(b"")
    resumed = config(tmp_path, tiny_base, "one-rank", resume_from=str(ds))
    err = torch_ref(capsys, ["train", resumed], status=2)
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            "was written by 2 data-parallel ranks; this run has 1 (DeepSpeed resumes a ZeRO "
            "checkpoint at its world size)"
        )
    )
