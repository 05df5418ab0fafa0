"""`jax-sft train`, `eval` and `dschat-step1` end to end, and their answers to bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import transformers
from train_fixtures import DEMO_DATA, run_config, write_config

from interop.outputs import file_mode
from interop.processes import with_cpu_devices
from jax_sft import cli


def test_train_writes_metrics_checkpoints_and_hf_export(tiny_base, tmp_path, capsys):
    cfg = write_config(tmp_path, run_config(tiny_base, tmp_path / "out"))
    assert cli.main(["train", str(cfg), "--set", "train.max_steps=6", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6
    assert summary["last_eval"]["eval_loss"] < summary["first_eval"]["eval_loss"]
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert set(train_rows[0]) == {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"}
    assert any("eval_ppl" in r for r in rows)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf")
    assert model.config.model_type == "llama"
    # The umask decides the permissions (safetensors itself would make them 0600).
    assert (tmp_path / "out" / "hf" / "model.safetensors").stat().st_mode & 0o777 == file_mode()
    assert cli.main(["eval", str(cfg), "--checkpoint", str(tmp_path / "out"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(result["eval_loss"] - summary["last_eval"]["eval_loss"]) < 1e-5


def test_max_seq_len_beyond_positions_is_refused(tiny_base, tmp_path, capsys):
    cfg = write_config(tmp_path, run_config(tiny_base, tmp_path / "out"))
    assert cli.main(["train", str(cfg), "--set", "data.max_seq_len=4096"]) == 2
    assert "data.max_seq_len: 4096 is beyond the model's 512 positions" in capsys.readouterr().err


def test_existing_output_without_checkpoint_is_kept(tiny_base, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = write_config(tmp_path, run_config(tiny_base, out))
    assert cli.main(["train", str(cfg)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_dschat_step1_runs_run_1_3b_flags_on_local_jsonfile(parity_bases, tmp_path):
    opt = parity_bases["tiny-opt"]
    work = tmp_path / "app"
    (work / "data").mkdir(parents=True)
    for split in ("train", "eval"):
        rows = [json.loads(x) for x in (DEMO_DATA / f"{split}.jsonl").read_text().splitlines()]
        (work / "data" / f"{split}.json").write_text(json.dumps(rows))
    output = work / "output"
    output.mkdir()
    (output / "training.log").write_text("")  # run_1.3b.sh redirects its log here first
    flags = [
        "--data_path",
        "local/jsonfile",
        "--model_name_or_path",
        str(opt),
        "--gradient_accumulation_steps",
        "8",
        "--lora_dim",
        "128",
        "--zero_stage",
        "0",
        "--enable_tensorboard",
        "--tensorboard_path",
        str(output),
        "--deepspeed",
        "--output_dir",
        str(output),
    ]
    # `deepspeed --num_gpus 1`: one device, so the per-device batch is the global one.
    env = {**os.environ, "XLA_FLAGS": with_cpu_devices(os.environ["XLA_FLAGS"], 1)}
    proc = subprocess.run(
        [sys.executable, "-m", "jax_sft.cli", "dschat-step1", *flags],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, err = proc.stdout, proc.stderr
    ppl_lines = [x for x in out.splitlines() if x.startswith("ppl: ")]
    assert len(ppl_lines) == 2 and ", loss: " in ppl_lines[0]
    lora = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert lora["r"] == 128 and lora["peft_type"] == "LORA"  # --lora_dim trained LoRA
    assert "lora" not in err.lower()  # no "flag has no effect" note for it
    saved = transformers.AutoModelForCausalLM.from_pretrained(output)
    assert saved.config.model_type == "opt"
    assert (output / "tokenizer_config.json").is_file() and (output / "training.log").exists()
    shutil.rmtree(output)


def test_python_api_engine_saves_and_loads(tiny_base, tmp_path):
    import jax
    import numpy as np

    import jax_sft

    cfg = run_config(tiny_base, tmp_path / "out")
    engine, *_ = jax_sft.initialize(config=cfg, model=tiny_base)
    metrics = engine.train_step()
    assert float(metrics["loss"]) > 0 and engine.global_steps == 1
    path = engine.save_checkpoint(client_state={"epoch": 3})
    engine.close()
    other, *_ = jax_sft.initialize(config=cfg)
    assert other.load_checkpoint() == (path, {"epoch": 3}) and other.global_steps == 1
    for a, b in zip(jax.tree.leaves(engine.state), jax.tree.leaves(other.state), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert set(other.evaluate()) == {"eval_loss", "eval_ppl"}


def test_tensorboard_event_files_are_written(tiny_base, tmp_path, capsys):
    cfg = write_config(tmp_path, run_config(tiny_base, tmp_path / "out"))
    assert (
        cli.main(
            ["train", str(cfg), "--set", "logging.tensorboard=true", "--set", "train.max_steps=2"]
        )
        == 0
    )
    events = list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 100


def test_deepspeed_config_drives_batch_optimizer_and_schedule(tiny_base, tmp_path, capsys):
    ds = {
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 4,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 5e-4, "weight_decay": 0.1}},
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "total_num_steps": 10,
                "warmup_min_lr": 0,
                "warmup_max_lr": 5e-4,
                "warmup_num_steps": 4,
            },
        },
        "zero_optimization": {"stage": 2},
    }
    ds_file = tmp_path / "ds.json"
    ds_file.write_text(json.dumps(ds))
    cfg = write_config(tmp_path, run_config(tiny_base, tmp_path / "out"))
    argv = [
        "train",
        str(cfg),
        "--deepspeed_config",
        str(ds_file),
        "--set",
        "train.max_steps=3",
        "--json",
    ]
    assert cli.main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    from interop.config import ScheduleConfig
    from interop.schedules import learning_rate

    sched = ScheduleConfig(type="warmup_decay_lr", warmup_steps=4, total_steps=10)
    assert [r["lr"] for r in steps] == [learning_rate(i, 5e-4, sched, 3) for i in range(3)]
    assert steps[0]["tokens"] > 0
    capsys.readouterr()
    ds["train_batch_size"] = 12
    ds_file.write_text(json.dumps(ds))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(ds_file) in err and "train_batch_size 12" in err


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        (["sparse.method=random", "sparse.density=1.5"], "sparse.density"),
        (["sparse.method=random", "sparse.density=0"], "sparse.density"),
        (
            ["sparse.method=random", "sparse.target=[nothing]"],
            "sparse.target: ['nothing'] matches no parameter "
            "(parameters: embed_tokens.embedding, layers.0.",
        ),
        (["sparse.method=bitfit"], "sparse.method: bitfit needs biases, and this model has none"),
    ],
)
def test_bad_sparse_settings_exit_2_with_the_field(tiny_base, tmp_path, capsys, settings, line):
    cfg = write_config(tmp_path, run_config(tiny_base, tmp_path / "out"))
    argv = ["train", str(cfg)]
    for setting in settings:
        argv += ["--set", setting]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0], err
    assert "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()


def test_dschat_deepspeed_config_batch_rule_counts_every_device(tiny_base, tmp_path, monkeypatch):
    """16 = micro 2 x accumulation 1 x 8 data-parallel devices: it holds on 8 devices only."""
    work = tmp_path / "app"
    (work / "data").mkdir(parents=True)
    for split in ("train", "eval"):
        shutil.copy(DEMO_DATA / f"{split}.jsonl", work / "data" / f"{split}.json")
    ds = work / "ds.json"
    rule = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2}
    ds.write_text(json.dumps({**rule, "gradient_accumulation_steps": 1}))
    flags = ["dschat-step1", "--data_path", "local/jsonfile", "--model_name_or_path"]
    flags += [str(tiny_base), "--max_seq_len", "64", "--dtype", "fp32", "--data_split", "10,0,0"]
    flags += ["--deepspeed_config"]
    flags += [str(ds), "--output_dir", str(work / "out")]
    monkeypatch.chdir(work)
    assert cli.main(flags) == 0
    rows = [json.loads(x) for x in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps[-1] == -(-213 // 16)  # global batches of 16 rows

    one = {**os.environ, "XLA_FLAGS": with_cpu_devices(os.environ["XLA_FLAGS"], 1)}
    flags[-1] = str(work / "out1")
    proc = subprocess.run(
        [sys.executable, "-m", "jax_sft.cli", *flags], capture_output=True, text=True, env=one
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"jax-sft: error: {ds}: train_batch_size 16 != train_micro_batch_size_per_gpu 2"
        " x gradient_accumulation_steps 1 x data-parallel size 1"
    ]
    assert not (work / "out1").exists()


def test_print_loss_and_logging_json_are_acted_on(tiny_base, tmp_path, capsys):
    cfg = write_config(tmp_path, run_config(tiny_base, tmp_path / "out", train={"max_steps": 3}))
    settings = ["--set", "logging.print_loss=true", "--set", "logging.json=true"]
    assert cli.main(["train", str(cfg), "--set", "train.log_every=10", *settings]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    printed = [x for x in lines if x.startswith("Epoch: ")]
    assert [x.split(", loss = ")[0] for x in printed] == [
        f"Epoch: 0, Step: {step}, Rank: 0" for step in (1, 2, 3)
    ]
    logged = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert [float(x.split(" = ")[1]) for x in printed] == losses
    assert json.loads(lines[-1])["steps"] == 3  # logging.json ends with the JSON summary
