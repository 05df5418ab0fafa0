"""Reading DeepSpeed's own checkpoints: every ZeRO stage, fp32 and bf16, 1 and 2 processes,
against DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` bit for bit; the Adam
moments against the ZeRO-0 run's; `jax-sft convert` on them; bad and hostile input."""

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from interop.checkpoints.deepspeed import DeepSpeedCheckpoint
from interop.errors import UserError
from interop.processes import free_port
from jax_sft import cli

pytestmark = pytest.mark.multiprocess
HERE = Path(__file__).parent
ONE = ["z0_fp32", "z0_bf16", "z1_fp32", "z1_bf16", "z2_fp32", "z2_bf16", "z3_fp32", "z3_bf16"]
TWO = ["z1_fp32", "z2_fp32", "z2_bf16", "z3_fp32", "z3_bf16"]
RUNS = [f"1/{r}" for r in ONE] + [f"2/{r}" for r in TWO]
TAG = "global_step2"


@pytest.fixture(scope="session")
def ds_runs(tmp_path_factory) -> Path:
    """OUT/1/<run> written by one process, OUT/2/<run> by two (torchrun), OUT/*/base;
    made once per test session, whichever xdist worker asks first."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, shared by its workers
    out = root / "deepspeed-runs"
    with open(root / "deepspeed-runs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "complete").exists():
            _write_runs(out)
            (out / "complete").touch()
    return out


def _write_runs(out: Path) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(free_port())}
    script = str(HERE / "deepspeed_runs.py")
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    two += ["--master_port", str(free_port())]
    for argv in (
        [sys.executable, script, str(out / "1"), *ONE],
        [*two, script, str(out / "2"), *TWO],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]


def trained_names() -> list[str]:
    """The optimizer's parameter order in deepspeed_runs.py: the module's trainable ones."""
    sys.path.insert(0, str(HERE))
    import transformers  # noqa: PLC0415
    from deepspeed_runs import CONFIG  # noqa: PLC0415

    model = transformers.LlamaForCausalLM(CONFIG)
    frozen = {f"model.layers.0.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
    return [n for n, _ in model.named_parameters() if n not in frozen]


def deepspeeds_own(run: Path) -> dict[str, np.ndarray]:
    """What DeepSpeed itself says the fp32 weights are (ZeRO-0: the module, and a bf16
    run's fp32 masters in the optimizer's order)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if (run / TAG / "mp_rank_00_model_states.pt").is_file() and not list(
        (run / TAG).glob("*optim*")
    ):
        states = torch.load(run / TAG / "mp_rank_00_model_states.pt", weights_only=False)
        own = {k: v.float().numpy() for k, v in states["module"].items()}
        masters = (states["optimizer"] or {}).get("fp32_groups")
        if masters:
            own.update(zip(trained_names(), (t.detach().numpy() for t in masters[0]), strict=True))
            own["lm_head.weight"] = own["model.embed_tokens.weight"]
        return {k: v for k, v in own.items() if "mlp" not in k or "layers.0" not in k}
    got = get_fp32_state_dict_from_zero_checkpoint(str(run))
    return {k: v.detach().float().numpy() for k, v in got.items()}


@pytest.mark.parametrize("run", RUNS)
def test_our_tensors_are_deepspeeds_bit_for_bit(ds_runs, run):
    path = ds_runs / run
    base = load_file(path.parent / "base" / "model.safetensors")
    ours = DeepSpeedCheckpoint(path, base=_Reader(base))
    own = deepspeeds_own(path)
    assert set(own) <= set(ours.names())
    for name, want in own.items():
        got = ours.get(name)
        assert got.dtype == np.float32 and got.shape == want.shape, name
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
    frozen = [n for n in ours.names() if "layers.0.mlp" in n]
    assert len(frozen) == 3  # DeepSpeed's own reader drops them at ZeRO-1
    for name in frozen:  # never trained: the base's weights, in 16 bits for bf16 runs
        want = base[name]
        if run.endswith("bf16") and run.split("/")[1][1] in "23":
            want = torch.from_numpy(want).bfloat16().float().numpy()
        assert np.array_equal(ours.get(name), want), name
    # DeepSpeed's optimizer for 16-bit runs without ZeRO takes one step of zero gradients
    # when it is made, so its Adam step count runs one ahead of the engine's
    assert ours.global_steps == 2 and ours.step == (3 if run == "1/z0_bf16" else 2)
    assert ours.world_size == (int(run[0]) if ours.stage else 1)


@pytest.mark.parametrize("run", [r for r in RUNS if "fp32" in r and "z0" not in r])
def test_adam_moments_are_those_of_the_same_run_without_zero(ds_runs, run):
    ref = DeepSpeedCheckpoint(ds_runs / "1" / "z0_fp32")
    ours = DeepSpeedCheckpoint(ds_runs / run)
    assert sorted(ours.moments) == sorted(ref.moments) and len(ref.moments) == 17
    for name in ref.moments:
        for got, want in zip(ours.moments_of(name), ref.moments_of(name), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8, err_msg=name)
            assert np.abs(want).max() > 0


def jax_sft(capfd, *args: str) -> tuple[int, str]:
    """`jax-sft ARGS` in this process: its exit status and everything written to stderr
    meanwhile, C++ logging included (a fresh process's stderr is tests/test_cli_checkpoints')."""
    capfd.readouterr()
    status = cli.main(list(args))
    return status, capfd.readouterr().err


def to_hf(capfd, runs: Path, src, dst: Path, *extra: str) -> tuple[int, str]:
    """`jax-sft convert SRC DST --to hf` with the runs' base model as --base."""
    base = str(runs / "1" / "base")
    return jax_sft(capfd, "convert", str(src), str(dst), "--to", "hf", "--base", base, *extra)


def test_convert_to_hf_streams_the_fp32_masters(ds_runs, tmp_path, capfd):
    src = tmp_path / "ds"
    shutil.copytree(ds_runs / "2" / "z3_bf16", src)
    shutil.copy(ds_runs / "2" / "base" / "model.safetensors", src / TAG)  # a 16-bit copy
    base = str(ds_runs / "2" / "base")
    status, err = jax_sft(
        capfd, "convert", str(src), str(tmp_path / "hf"), "--to", "hf", "--base", base
    )
    assert status == 0, err
    assert "fp32 master weights from the ZeRO-3 optimizer partitions of 2 rank(s)" in err
    assert "model.safetensors (16-bit) not used: the fp32 masters are" in err
    written = load_file(tmp_path / "hf" / "model.safetensors")
    own = deepspeeds_own(src)
    assert set(written) == set(own) - {"lm_head.weight"}  # tied: HF stores it once
    for name, array in written.items():
        assert np.array_equal(array, own[name]), name


def hostile(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"module": Payload()}, path)


def mixed_world_sizes(runs: Path, dst: Path) -> None:
    shutil.copytree(runs / "1" / "z2_fp32", dst)
    shutil.copy(
        runs / "2" / "z2_fp32" / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt", dst / TAG
    )


def stage(path: Path, value: int) -> None:
    states = torch.load(path, weights_only=False)
    states["optimizer_state_dict"]["zero_stage"] = value
    torch.save(states, path)


OPTIM = "zero_pp_rank_{}_mp_rank_00_optim_states.pt"
BAD = {
    "a missing rank file": (
        lambda r, d: (
            shutil.copytree(r / "2" / "z2_fp32", d),
            (d / TAG / OPTIM.format(1)).unlink(),
        ),
        "the optimizer states file of rank 1 is missing (zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ),
    "files from mixed world sizes": (
        mixed_world_sizes,
        "written by a run of 1 rank(s), but 2 rank files are here",
    ),
    "an unknown ZeRO stage": (
        lambda r, d: (shutil.copytree(r / "1" / "z2_fp32", d), stage(d / TAG / OPTIM.format(0), 7)),
        "unknown ZeRO stage 7",
    ),
    "an unreadable pickle": (
        lambda r, d: (
            shutil.copytree(r / "1" / "z2_fp32", d),
            (d / TAG / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04 not a zip"),
        ),
        "mp_rank_00_model_states.pt: not a readable PyTorch checkpoint",
    ),
    "latest naming a tag that does not exist": (
        lambda r, d: (shutil.copytree(r / "1" / "z2_fp32", d), (d / "latest").write_text("step9")),
        "latest: names tag 'step9', which holds no checkpoint here",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoints_are_one_line(ds_runs, tmp_path, case, capfd):
    prepare, fragment = BAD[case]
    src = tmp_path / "ds"
    prepare(ds_runs, src)
    status, err = to_hf(capfd, ds_runs, src, tmp_path / "out")
    assert status == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_tag_that_does_not_exist_and_a_missing_config(ds_runs, tmp_path, capfd):
    src = str(ds_runs / "1" / "z1_fp32")
    status, err = to_hf(capfd, ds_runs, src, tmp_path / "a", "--tag", "nope")
    assert status == 2 and f"no checkpoint tagged 'nope' (tags here: {TAG})" in err
    status, err = jax_sft(capfd, "convert", src, str(tmp_path / "b"), "--to", "hf")
    assert status == 2 and "holds no model config; name the Hugging Face" in err


def test_a_hostile_pickle_is_refused_and_nothing_runs(ds_runs, tmp_path, capfd):
    src, marker = tmp_path / "ds", tmp_path / "ran"
    shutil.copytree(ds_runs / "1" / "z2_fp32", src)
    hostile(src / TAG / "mp_rank_00_model_states.pt", marker)
    with pytest.raises(UserError, match=r"refused: the pickle calls posix\.system"):
        DeepSpeedCheckpoint(src)
    status, err = to_hf(capfd, ds_runs, src, tmp_path / "out")
    assert status == 2 and "posix.system" in err
    assert not marker.exists()
    torch.load(src / TAG / "mp_rank_00_model_states.pt", weights_only=False)  # the payload is live
    assert marker.exists()


class _Reader:
    def __init__(self, tensors: dict):
        self.tensors = tensors

    def get(self, name: str) -> np.ndarray:
        return self.tensors[name]
