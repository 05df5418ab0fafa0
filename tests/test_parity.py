"""`jax-sft parity`: the JAX trainer and the PyTorch/DeepSpeed reference train alike.

Each case trains both backends for 50 fp32 steps with gradient accumulation 2 from one
initial checkpoint (a tiny model built from its config) on the bundled data, and checks
the figures `parity.json` reports: per-step relative loss difference and the final
parameters' largest absolute difference.
"""

import json
from pathlib import Path

import pytest

from interop.errors import BackendError, UserError
from jax_sft import cli
from jax_sft.commands.parity import compared_losses

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "parity-tiny.yaml")
MODES = {
    "dense": [],
    # On packed rows: the reference keeps attention inside each segment with a 4-D mask.
    "sparse, packed": ["sparse.method=random", "sparse.density=0.05", "data.packing=true"],
    "lora": ["lora.rank=4", "lora.alpha=8", "lora.target_modules=[q_proj,v_proj,fc1]"],
}


def parity(
    out: Path, base: Path, settings: list[str], *extra: str, steps: int = 50
) -> tuple[int, dict | None]:
    argv = ["parity", CONFIG, "--steps", str(steps), "--json", *extra]
    for setting in [f"model.path={base}", "model.tiny=null", f"train.output_dir={out}", *settings]:
        argv += ["--set", setting]
    code = cli.main(argv)
    report = out / "parity.json"
    return code, json.loads(report.read_text()) if report.exists() else None


def _modules(tiny: str, settings: list[str]) -> list[str]:
    # OPT's MLP is fc1/fc2, Llama's gate/up/down: LoRA takes q, v and the first MLP layer.
    mlp = "fc1" if tiny == "tiny-opt" else "up_proj"
    return [s.replace("fc1", mlp) for s in settings]


# Every mode on Llama; OPT (a second family through both trainers) dense only: the modes
# are family-agnostic code, and the suite's time budget is spent where it finds most.
# Sparse and LoRA run as two torch processes under ZeRO-2 against two JAX devices: the
# single-process case is that run's special case (a sharded JAX step equals the
# single-device one, tests/test_sharding.py; dense ZeRO-2 on two processes equals one,
# tests/test_torch_ref_train.py). Packed rows ride along with sparse (and, in
# tests/test_prune_parity.py, with distillation); padded rows are the other cases'.
CASES = [("tiny-llama", "dense", 1), ("tiny-opt", "dense", 1)]
CASES += [("tiny-llama", mode, 2) for mode in ("sparse, packed", "lora")]


@pytest.mark.multiprocess
@pytest.mark.parametrize("tiny, mode, procs", CASES)
def test_fp32_parity_over_50_steps(parity_bases, tmp_path, tiny, mode, procs):
    settings = _modules(tiny, MODES[mode])
    extra = ["--torch-procs", str(procs)] if procs > 1 else []
    if procs > 1:
        settings.append("parallel.zero_stage=2")
    code, report = parity(tmp_path, parity_bases[tiny], settings, *extra)
    assert report is not None and report["processes"] == procs
    assert report["max_rel_loss_diff"] <= 1e-4, report["max_rel_loss_diff"]
    assert report["final_max_abs_param_diff"] <= 1e-5, (
        report["final_max_abs_param_diff"],
        report["worst_tensor"],
    )
    # Each framework's own forward pass over its own final weights.
    assert report["final_max_abs_logit_diff"] <= 1e-5, report["final_max_abs_logit_diff"]
    # OPT's key biases, which no output depends on, are judged apart (interop/parity.py).
    keys = [f"model.decoder.layers.{i}.self_attn.k_proj.bias" for i in (0, 1)]
    assert report["invariant_tensors"] == (keys if tiny == "tiny-opt" else [])
    assert code == 0 and len(report["steps"]) == 50
    assert report["loss_jax"][-1] < report["loss_jax"][0]  # it trained
    if "packed" in mode:
        # Two examples or more per row: a step scores more tokens than padded rows hold.
        rows = (tmp_path / "torch" / "metrics.jsonl").read_text().splitlines()
        assert min(r["tokens"] for r in map(json.loads, rows) if "tokens" in r) > 200


@pytest.mark.multiprocess
def test_bf16_losses_stay_within_2e_2(parity_bases, tmp_path):
    settings = ["model.dtype=bfloat16"]
    _, report = parity(tmp_path, parity_bases["tiny-llama"], settings, "--rtol", "2e-2")
    assert report is not None
    assert report["max_rel_loss_diff"] <= 2e-2, report["max_rel_loss_diff"]
    assert report["max_rel_loss_diff"] > 0  # bf16 rounding differs between the stacks


@pytest.mark.multiprocess
def test_a_failing_torch_side_is_reported_with_its_stderr_not_compared(
    parity_bases, tmp_path, capsys
):
    # Movement pruning is JAX-only: torch-ref refuses it.
    code, report = parity(
        tmp_path,
        parity_bases["tiny-llama"],
        ["prune.method=movement", "prune.start_step=1"],
        steps=2,
    )
    err = capsys.readouterr().err
    assert code == 1 and report is None
    assert "the torch side failed (exit 2), so nothing was compared" in err
    assert "movement is not in the PyTorch reference" in err  # torch-ref's own stderr


def test_a_missing_torch_extra_is_reported_as_such(parity_bases, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepspeed" else real(name, *a),
    )
    code, report = parity(tmp_path, parity_bases["tiny-llama"], [])
    assert code == 1 and report is None
    assert (
        "torch and deepspeed are not installed (pip install -e '.[torch]')"
        in capsys.readouterr().err
    )


def test_a_resumed_parity_run_compares_the_steps_after_the_checkpoint(tmp_path):
    for side, losses in (("jax", [2.0, 1.5]), ("torch", [2.0, 1.5000001])):
        (tmp_path / side).mkdir()
        rows = [json.dumps({"step": s, "loss": v}) for s, v in zip((11, 12), losses, strict=True)]
        (tmp_path / side / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    found = compared_losses(tmp_path, 12, resumed=True)
    assert found["steps"] == [11, 12] and 0 < found["max_rel_loss_diff"] < 1e-6
    with pytest.raises(BackendError, match=r"expected steps 1-12 logged on each side"):
        compared_losses(tmp_path, 12)  # a run that did not resume must start at step 1
    (tmp_path / "torch" / "metrics.jsonl").write_text(json.dumps({"step": 12, "loss": 1.5}))
    with pytest.raises(BackendError, match=r"found \[\[11, 12\], \[12\]\]"):
        compared_losses(tmp_path, 12, resumed=True)


def test_a_failing_jax_side_is_reported_with_its_stderr(tiny_base, tmp_path, monkeypatch):
    """In this process (it holds the devices), a JAX side's failure is reported as the
    child's would be: exit status, log file, stderr tail."""
    from train_fixtures import run_config, write_config

    from jax_sft.commands import parity as command

    def refuse(cfg, **_):
        assert cfg.parallel.data == 2 and cfg.train.output_dir == str(tmp_path / "jax")
        raise UserError("model.path: refused here")

    monkeypatch.setattr(command, "train", refuse)
    config = write_config(tmp_path, run_config(tiny_base, tmp_path / "unused"))
    with pytest.raises(BackendError) as found:
        command.run_jax_side(config, tmp_path, 2)
    message = str(found.value)
    assert message.startswith("the jax side failed (exit 2), so nothing was compared")
    assert message.endswith("jax-sft: error: model.path: refused here")
    assert "--- stderr ---" in (tmp_path / "jax.log").read_text()
