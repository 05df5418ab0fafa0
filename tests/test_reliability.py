"""Bad input and faults, replayed as a table against both command lines.

Each case prepares a directory, runs one command, and checks: the exit status, that
stderr is one line holding the expected fragment (no traceback), that every file that
was there before is byte-for-byte unchanged, and that no empty directory is left.
"""

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from train_fixtures import DEMO_DATA, run_config, write_config

from interop.run_dir import RunDir, identity
from jax_sft import cli as jax_cli
from torch_ref import cli as torch_cli

CLIS = {"jax-sft": jax_cli.main, "torch-ref": torch_cli.main}


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def empty_dirs(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]


def config(tmp: Path, base: Path, **sections) -> str:
    cfg = run_config(base, tmp / "out", **sections)
    return str(write_config(tmp, cfg))


def old_run(tmp: Path) -> None:
    """An earlier run's directory, with the user's own file in it."""
    for name, text in {
        "notes.txt": "mine",
        "hf/README": "old model",
        "metrics.jsonl": '{"step": 1, "loss": 2.0}\n',
        "checkpoints/5/x": "state",
    }.items():
        (tmp / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "out" / name).write_text(text)


def marker(tmp: Path, base: Path, prog: str, change: dict, **sections) -> str:
    """A run directory holding another run's checkpoint; the config of this run."""
    path = config(tmp, base, **sections)
    cfg = run_config(base, tmp / "out", **sections)
    ident = {**identity(cfg, "jax" if prog == "jax-sft" else "torch"), **change}
    (tmp / "out" / "checkpoints" / "5").mkdir(parents=True)
    (tmp / "out" / "checkpoints" / "5" / "state").write_text("theirs")
    (tmp / "out" / "run.json").write_text(json.dumps({"identity": ident}))
    return path


def edited_base(tmp: Path, base: Path, **change) -> Path:
    model = tmp / "model"
    shutil.copytree(base, model)
    data = json.loads((model / "config.json").read_text())
    data.update(change)
    for key in [k for k, v in change.items() if v is None]:
        data.pop(key)
    (model / "config.json").write_text(json.dumps(data))
    return model


def latin1_data(tmp: Path) -> Path:
    data = tmp / "bad.jsonl"
    rows = (DEMO_DATA / "train.jsonl").read_bytes().splitlines(keepends=True)
    data.write_bytes(b"".join(rows[:2]) + b'{"prompt": "caf\xe9", "chosen": "x"}\n')
    return data


@dataclass
class Case:
    name: str
    prepare: Callable[[Path, Path, str], list[str]]  # (tmp, base, prog) -> argv
    code: int
    fragment: str
    progs: tuple[str, ...] = ("jax-sft", "torch-ref")


CASES = [
    Case(
        "overwrite with a wrong data path keeps the old run",
        lambda t, b, p: (old_run(t), ["train", config(t, b), "--overwrite", "--set",
                                      f"data.sources=[{{path: {t / 'nope.jsonl'}}}]"])[1],
        2,
        "nope.jsonl: no such data file",
    ),
    Case(
        "every completion truncated away",
        lambda t, b, p: ["train", config(t, b, data={
            "max_seq_len": 4, "loss_on": "completion",
            "sources": [{"path": str(DEMO_DATA / "train.jsonl")}]})],
        2,
        "with loss_on completion, truncation to max_seq_len 4 cut off every completion",
    ),
    Case(
        "a checkpoint of another model is not resumed",
        lambda t, b, p: ["train", marker(t, b, p, {"model.path": "0" * 64})],
        2,
        "holds a checkpoint of another run (model.path:",
    ),
    Case(
        "a dense checkpoint is not resumed by a sparse run",
        lambda t, b, p: ["train", marker(t, b, p, {"training_mode": "dense"},
                                         sparse={"method": "random", "density": 0.05})],
        2,
        'holds a checkpoint of another run (training_mode: "dense" there, "sparse" here)',
    ),
    Case(
        "a byte that is not UTF-8 in the training data",
        lambda t, b, p: ["train", config(t, b), "--set",
                         f"data.sources=[{{path: {latin1_data(t)}}}]"],
        2,
        "bad.jsonl:3: not UTF-8 text (byte 0xe9)",
    ),
    Case(
        "config.json without num_attention_heads",
        lambda t, b, p: ["train", config(t, b), "--set",
                         f"model.path={edited_base(t, b, num_attention_heads=None)}"],
        2,
        "config.json: no 'num_attention_heads', which a llama model needs",
    ),
    Case(
        "config.json with a size given as text",
        lambda t, b, p: ["train", config(t, b), "--set",
                         f"model.path={edited_base(t, b, hidden_size='64')}"],
        2,
        "config.json: 'hidden_size' must be a positive integer, got '64'",
    ),
    Case(
        "an adapter_config.json that is not JSON",
        lambda t, b, p: (
            (t / "adapter").mkdir(),
            (t / "adapter" / "adapter_config.json").write_text("{r: 4"),
            ["train", config(t, b), "--set", f"model.path={t / 'adapter'}"],
        )[2],
        2,
        "adapter_config.json: line 1: invalid JSON",
    ),
    Case(
        "no training data at all: refused before any base model is built",
        lambda t, b, p: ["train", "--set", f"train.output_dir={t / 'out'}"],
        2,
        "data.sources: no training data given",
    ),
    Case(
        "DeepSpeed-Chat --output_dir holding files the run did not make",
        lambda t, b, p: (
            shutil.copytree(b, t / "out"),
            (t / "out" / "hf").mkdir(),
            (t / "out" / "hf" / "README").write_text("mine"),
            ["dschat-step1", "--data_path", str(DEMO_DATA / "train.jsonl"),
             "--model_name_or_path", str(b), "--output_dir", str(t / "out")],
        )[3],
        2,
        "holds files this run did not make (chat_template.jinja, config.json, hf, model.",
        ("jax-sft",),
    ),
    Case(
        "convert into a path under a file",
        lambda t, b, p: ((t / "file").write_text("x"), ["convert", str(b), str(t / "file" / "x"),
                                                        "--to", "orbax"])[1],
        2,
        "is a file, not a directory",
        ("jax-sft",),
    ),
    Case(
        "compare with a negative tolerance",
        lambda t, b, p: ["compare", str(b), str(b), "--atol", "-1"],
        2,
        "--atol: -1.0 is not a tolerance",
        ("jax-sft",),
    ),
    Case(
        "launch with a command that does not exist: said once",
        lambda t, b, p: ["launch", "-n", "2", "--", "frobnicate"],
        2,
        "invalid choice: 'frobnicate'",
        ("jax-sft",),
    ),
    Case(
        "a truncated safetensors file",
        lambda t, b, p: (
            shutil.copytree(b, t / "model"),
            (t / "model" / "model.safetensors").write_bytes(
                (b / "model.safetensors").read_bytes()[:1000]),
            ["train", config(t, b), "--set", f"model.path={t / 'model'}"],
        )[2],
        2,
        "truncated or corrupt safetensors file",
    ),
]


@pytest.mark.parametrize("prog", sorted(CLIS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(case, prog, tiny_base, tmp_path, capsys):
    if prog not in case.progs:
        return
    argv = case.prepare(tmp_path, tiny_base, prog)
    before = snapshot(tmp_path)
    code = CLIS[prog](argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == case.code, err
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), err
    assert case.fragment in err[0], err
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing there before was touched
    assert not empty_dirs(tmp_path)
    assert not (tmp_path / ".out.partial").exists()


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_a_second_run_on_one_directory_is_refused_with_the_holders_pid(
    prog, tiny_base, tmp_path, capsys
):
    path = config(tmp_path, tiny_base)
    holder = RunDir(tmp_path / "out")
    holder.lock()  # as a running run holds it
    try:
        assert CLIS[prog](["train", path]) == 2
    finally:
        holder.close()
    err = capsys.readouterr().err.strip().splitlines()
    held = f"{tmp_path / 'out'}: another run is using it (pid {os.getpid()})"
    assert err == [f"{prog}: error: {held}"]


def test_read_only_output_directory_is_one_line(tiny_base, tmp_path, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    path = str(write_config(tmp_path, run_config(tiny_base, parent / "out")))
    root = os.geteuid() == 0  # root writes through permissions: make it immutable
    subprocess.run(["chattr", "+i", str(parent)] if root else ["chmod", "555", str(parent)])
    try:
        codes = [main(["train", path]) for main in CLIS.values()]
    finally:
        subprocess.run(["chattr", "-i", str(parent)] if root else ["chmod", "755", str(parent)])
    err = capsys.readouterr().err.strip().splitlines()
    assert codes == [2, 2] and len(err) == 2
    for line in err:
        assert str(parent) in line and ("Permission denied" in line or "not permitted" in line)


@pytest.mark.parametrize("module", ["jax_sft.cli", "torch_ref.cli"])
def test_ctrl_c_says_where_the_run_stood_and_it_resumes(module, tiny_base, tmp_path):
    path = config(tmp_path, tiny_base, train={"max_steps": 100000, "log_every": 1, "save_every": 3})
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "train", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / ".out.partial" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 8
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    prog = "jax-sft" if module.startswith("jax") else "torch-ref"
    assert lines[-1].startswith(f"{prog}: interrupted at step ") and "resumes it" in lines[-1]
    step = int(lines[-1].split("checkpoint step ")[1].split()[0])
    tag = str(step) if prog == "jax-sft" else f"step_{step}"
    assert tag in os.listdir(tmp_path / ".out.partial" / "checkpoints")
    assert not [line for line in lines if "Traceback" in line]


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_a_dead_run_is_stopped_and_named(prog, tiny_base, tmp_path, capsys):
    """lr 1e6 kills the model without a NaN: the loss sits at ln V with a zero gradient."""
    path = config(
        tmp_path,
        tiny_base,
        train={"max_steps": 12, "save_every": 4},
        optim={"learning_rate": 1e6},
        schedule={"type": "constant"},
    )
    assert CLIS[prog](["train", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{prog}: error: training died: from step " in err[0], err
    assert "the loss stayed at ln V = 5.7683 with a zero gradient" in err[0]  # V = 320 rows
    assert not (tmp_path / "out").exists()


def test_a_metrics_line_cut_short_by_a_kill_does_not_stop_the_resume(tiny_base, tmp_path):
    path = config(tmp_path, tiny_base, train={"max_steps": 2, "save_every": 1})
    assert jax_cli.main(["train", path]) == 0
    metrics = tmp_path / "out" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "lo')
    assert jax_cli.main(["train", path, "--set", "train.max_steps=4"]) == 0
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_a_full_disk_is_one_line(prog, tiny_base, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(disk)])
    assert mounted.returncode == 0, "a full disk is made as a small tmpfs (needs root)"
    try:
        cache = {"cache_dir": str(tmp_path / "token-cache")}  # the full disk holds the run only
        path = str(write_config(tmp_path, run_config(tiny_base, disk / "out", data=cache)))
        code = CLIS[prog](["train", path, "--set", "train.save_every=2"])
        leftovers = sorted(p.name for p in disk.iterdir())
    finally:
        subprocess.run(["umount", str(disk)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"{disk}/.out.partial/checkpoints: no space left on device for the checkpoint" in err[0]
    assert leftovers == []  # the partial run and its lock are gone


def test_steps_without_a_scored_token_are_counted(tiny_base, tmp_path, capsys):
    data = tmp_path / "two.jsonl"
    rows = [
        {"prompt": "word " * 40, "completion": " cut off"},  # no completion token survives
        {"prompt": "Q:", "completion": " a short answer"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sections = {
        "data": {"sources": [{"path": str(data)}], "eval_sources": [], "max_seq_len": 16,
                 "loss_on": "completion"},
        "train": {"micro_batch_size": 1, "max_steps": 4},
    }  # fmt: skip
    assert jax_cli.main(["train", config(tmp_path, tiny_base, **sections), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps_without_tokens"] == 2  # one of the two examples, in each epoch


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_nan_stop_names_a_checkpoint_that_resumes_at_a_lower_lr(prog, tiny_base, tmp_path, capsys):
    train = {"max_steps": 4, "save_every": 1, "log_every": 1, "keep_checkpoints": 1}
    path = config(tmp_path, tiny_base, train=train, schedule={"type": "constant"})
    main = CLIS[prog]
    assert main(["train", path]) == 0
    # Continued towards 10 steps at a rate that blows the weights up: update 5 makes
    # them ~1e30, so step 6's loss is NaN and checkpoint 5 must not be offered.
    longer = ["--set", "train.max_steps=10"]
    capsys.readouterr()
    assert main(["train", path, *longer, "--set", "optim.learning_rate=1e30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    checkpoints = tmp_path / "out" / "checkpoints"
    assert err == [
        f"note: resuming from step 4 ({checkpoints})",
        f"{prog}: error: training diverged: loss is nan at step 6; the last good checkpoint "
        f"is step 4 in {checkpoints}",
    ]
    kept = sorted(p.name for p in checkpoints.iterdir() if p.is_dir())
    assert kept == (["4"] if prog == "jax-sft" else ["step_4"])
    # That checkpoint resumes at a lower rate and the run finishes.
    assert main(["train", path, *longer, "--set", "optim.learning_rate=1e-4"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == list(range(1, 11)) and all(map(math.isfinite, losses.values()))
