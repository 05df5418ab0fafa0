"""`torch-ref train`, the PyTorch/DeepSpeed reference trainer, on its own.

Runs go through the command line in this process (DeepSpeed on the CPU, one gloo
process), except the two-process ZeRO-2 run, which is a `torchrun` subprocess. Agreement
with the JAX trainer is `jax-sft parity`'s business, not these tests'.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from train_fixtures import run_config, write_config

from interop.checkpoints.hf import HFCheckpointReader
from interop.config import ScheduleConfig
from interop.data.batches import Batches
from interop.data.pipeline import build_datasets
from interop.data.tokenizer import load_tokenizer, prepare_tokenizer
from interop.errors import UserError
from interop.outputs import file_mode
from interop.processes import free_port
from interop.schedules import learning_rate
from interop.sparse_format import fingerprint, read_adapter, write_adapter
from torch_ref import cli
from torch_ref.train.refusals import refuse_unsupported

CONSTANT = {"type": "constant"}  # the fixtures' warmup makes update 0 a no-op


def train(tmp_path, name, cfg, *extra):
    """Exit status of `torch-ref train` on `cfg`, written to its own directory."""
    folder = tmp_path / f"{name}-config"
    folder.mkdir()
    return cli.main(["train", str(write_config(folder, cfg)), *extra])


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out):
    return np.array([r["loss"] for r in rows(out) if "loss" in r])


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_dense_run_writes_metrics_checkpoint_and_hf(tiny_base, tmp_path, capsys):
    out = tmp_path / "dense"
    cfg = run_config(tiny_base, out, train={"max_steps": 6}, optim={"learning_rate": 3e-3})
    assert train(tmp_path, "dense", cfg, "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6 and summary["output_dir"] == str(out)
    entries = rows(out)
    steps = [r for r in entries if "loss" in r]
    evals = [r for r in entries if "eval_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(
        set(r) == {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"} for r in steps
    )
    assert [set(r) for r in evals] == [{"step", "eval_loss", "eval_ppl"}] * 2
    assert [r["step"] for r in evals] == [0, 6] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_6"
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "hf")
    assert model.dtype == torch.float32
    assert transformers.AutoTokenizer.from_pretrained(out / "hf").pad_token == "<pad>"
    assert (out / "hf" / "model.safetensors").stat().st_mode & 0o777 == file_mode()


def test_first_loss_is_the_initial_models_mean_token_loss(tiny_base, tmp_path, capsys):
    """The base asks for attention dropout; the reference trains without (a note says so)
    and its export keeps the base's config."""
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.3}))
    out = tmp_path / "first"
    cfg = run_config(base, out, train={"max_steps": 1})
    assert train(tmp_path, "first", cfg) == 0
    assert "the model config sets attention_dropout 0.3" in capsys.readouterr().err
    assert json.loads((out / "hf" / "config.json").read_text())["attention_dropout"] == 0.3
    tok, eot = prepare_tokenizer(
        load_tokenizer(tiny_base), "llama", eot_token=None, add_eot_token=False
    )
    examples, _ = build_datasets(cfg.data, tok, eot)
    batch = Batches(
        examples, batch_size=4, seq_len=64, pad_id=tok.pad_token_id, packing=False, seed=1234
    ).batch(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_base, dtype=torch.float32, attn_implementation="eager"
    )
    t = {k: torch.from_numpy(v).long() for k, v in batch.items()}
    with torch.no_grad():
        want = model(
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            position_ids=t["positions"],
            labels=t["labels"],
        ).loss.item()
    assert abs(losses(out)[0] - want) <= 1e-6 * want


def test_sdpa_attention_trains_as_eager_attention(tiny_base, tmp_path):
    """The benchmark's PyTorch side (`--attn_implementation sdpa`) is the same training."""
    runs = {}
    for attention in ("eager", "sdpa"):
        out = tmp_path / attention
        cfg = run_config(tiny_base, out, train={"max_steps": 3}, schedule=CONSTANT)
        assert train(tmp_path, attention, cfg, "--attn_implementation", attention) == 0
        runs[attention] = losses(out)
    assert len(runs["sdpa"]) == 3
    np.testing.assert_allclose(runs["sdpa"], runs["eager"], rtol=1e-5)


def test_two_micro_batches_of_two_update_like_one_of_four(tiny_base, tmp_path):
    results = {}
    for accum, micro in ((1, 4), (2, 2)):
        out = tmp_path / f"a{accum}"
        t = {"max_steps": 1, "micro_batch_size": micro, "gradient_accumulation_steps": accum}
        assert (
            train(tmp_path, out.name, run_config(tiny_base, out, train=t, schedule=CONSTANT)) == 0
        )
        results[accum] = (losses(out)[0], weights(out / "hf"))
    (loss_1, w_1), (loss_2, w_2) = results[1], results[2]
    base = weights(tiny_base)
    assert abs(loss_1 - loss_2) <= 1e-6 * loss_1
    assert max(np.max(np.abs(w_1[k] - base[k])) for k in base) > 1e-4  # it did update
    assert max(np.max(np.abs(w_1[k] - w_2[k])) for k in w_1) <= 1e-6


def test_a_run_resumes_from_its_deepspeed_checkpoint(tiny_base, tmp_path):
    # warm-up then cosine: the resumed run must take the schedule up where it stopped
    settings = dict(schedule={"type": "cosine", "warmup_steps": 1}, parallel={"zero_stage": 2})
    t = {"max_steps": 4, "save_every": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 2}
    whole = tmp_path / "whole"
    assert train(tmp_path, "whole", run_config(tiny_base, whole, train=t, **settings)) == 0
    cut = tmp_path / "cut"
    first = run_config(tiny_base, cut, train={**t, "max_steps": 2}, **settings)
    assert train(tmp_path, "cut", first) == 0
    again = run_config(tiny_base, cut, train=t, **settings)
    assert train(tmp_path, "again", again, "--resume") == 0
    assert np.array_equal(losses(cut), losses(whole))
    w_1, w_2 = weights(whole / "hf"), weights(cut / "hf")
    assert all(np.array_equal(w_1[k], w_2[k]) for k in w_1)


@pytest.mark.multiprocess
def test_zero2_on_two_processes_matches_one_process(tiny_base, tmp_path):
    settings = dict(parallel={"zero_stage": 2}, schedule=CONSTANT)
    one = tmp_path / "one"
    cfg = run_config(tiny_base, one, train={"max_steps": 3}, **settings)
    assert train(tmp_path, "one", cfg) == 0
    two = tmp_path / "two"
    cfg = run_config(
        tiny_base, two, train={"max_steps": 3, "micro_batch_size": 2}, **settings
    ).model_copy(update={"parallel": cfg.parallel.model_copy(update={"data": 2})})
    folder = tmp_path / "two-config"
    folder.mkdir()
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    argv += ["--master_port", str(free_port()), "-m", "torch_ref.cli", "train"]
    argv += [str(write_config(folder, cfg)), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 3  # rank 0 alone
    want, got = losses(one), losses(two)
    assert len(got) == 3 and np.max(np.abs(got - want) / want) <= 1e-5
    w_1, w_2 = weights(one / "hf"), weights(two / "hf")
    assert max(np.max(np.abs(w_1[k] - w_2[k])) for k in w_1) <= 1e-5


def _zero_adapter(base, dst, density=0.05):
    """A sparse adapter with zero values on random entries of the attention projections."""
    with HFCheckpointReader(base) as reader:
        tensors = dict(reader)
    rng = np.random.default_rng(0)
    deltas = {}
    for name, w in tensors.items():
        if name.endswith(("q_proj.weight", "v_proj.weight")):
            idx = np.sort(rng.choice(w.size, int(density * w.size), replace=False))
            deltas[name] = (idx.astype(np.int32), np.zeros(idx.size, np.float32))
    dst.mkdir()
    base_fp = fingerprint(tensors, tensors.__getitem__)
    write_adapter(dst, deltas, {"base_model": str(base), "base_fingerprint": base_fp})
    return deltas


@pytest.mark.parametrize(("zero", "penalty"), [(0, "l1"), (3, "l2")])
def test_sparse_run_from_an_adapter_changes_only_its_entries(tiny_base, tmp_path, zero, penalty):
    deltas = _zero_adapter(tiny_base, tmp_path / "init")
    out = tmp_path / "sparse"
    sparse = {"method": "random", "regularization": penalty, "reg_weight": 0.01}
    cfg = run_config(
        tmp_path / "init",
        out,
        sparse=sparse,
        schedule=CONSTANT,
        train={"max_steps": 2},
        optim={"learning_rate": 1e-2, "weight_decay": 0.1},
        parallel={"zero_stage": zero},
    )
    assert train(tmp_path, "sparse", cfg) == 0
    base, merged = weights(tiny_base), weights(out / "hf")
    config, trained = read_adapter(out / "adapter")
    assert config["base_fingerprint"] == fingerprint(base, base.__getitem__)
    assert sorted(trained) == sorted(deltas)
    for name, w in base.items():
        outside = np.ones(w.size, bool)
        if name in deltas:
            idx, values = trained[name]
            assert np.array_equal(idx, deltas[name][0]) and np.all(values != 0)
            outside[idx] = False
            got = merged[name].reshape(-1)[idx]
            assert np.array_equal(got, w.reshape(-1)[idx] + values)
        assert np.array_equal(merged[name].reshape(-1)[outside], w.reshape(-1)[outside])


@pytest.mark.parametrize("zero", [0, 3])
def test_lora_run_from_a_peft_adapter_trains_only_the_factors(tiny_base, tmp_path, zero):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_base)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    peft.get_peft_model(model, config).save_pretrained(tmp_path / "init")
    initial = load_file(str(tmp_path / "init" / "adapter_model.safetensors"))
    out = tmp_path / "lora"
    cfg = run_config(
        tmp_path / "init",
        out,
        lora={"rank": 2, "target_modules": ["q_proj", "v_proj"]},
        schedule=CONSTANT,
        train={"max_steps": 2},
        optim={"weight_decay": 0.1},
        parallel={"zero_stage": zero},
    )
    assert train(tmp_path, "lora", cfg) == 0
    trained = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert sorted(trained) == sorted(initial)
    assert all(not np.array_equal(trained[k], initial[k]) for k in trained)
    base, merged = weights(tiny_base), weights(out / "hf")
    for name, w in base.items():
        changed = not np.array_equal(merged[name], w)
        assert changed == name.endswith(("q_proj.weight", "v_proj.weight")), name


@pytest.mark.parametrize(
    ("sections", "line"),
    [
        (
            {"sparse": {"method": "random", "density": 0.1}},
            "torch-ref: error: sparse.method: random without an adapter; the PyTorch "
            "reference does not select entries itself: start from a sparse adapter "
            "(model.path) that holds the index sets (jax-sft parity makes one)",
        ),
    ],
)
def test_what_the_reference_cannot_do_exits_2(tiny_base, tmp_path, capsys, sections, line):
    out = tmp_path / "refused"
    assert train(tmp_path, "refused", run_config(tiny_base, out, **sections)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == line
    assert not out.exists()


def test_what_the_config_alone_refuses_is_refused_before_torch_loads(tiny_base, tmp_path):
    """`jax-sft parity` waits for this side's refusal: it comes without torch's imports."""
    sections = {"parallel": {"tensor": 2}, "lora": {"rank": 4, "dropout": 0.1}}
    config = write_config(tmp_path, run_config(tiny_base, tmp_path / "out", **sections))
    code = (
        "import sys\nfrom torch_ref import cli\n"
        f"status = cli.main(['train', {str(config)!r}])\n"
        "print(status, sorted({'torch', 'deepspeed', 'transformers'} & set(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split("\n")[-2] == "2 []", proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        "torch-ref: error: parallel.tensor: 2; the PyTorch reference has no tensor parallelism"
    )
    assert not (tmp_path / "out").exists()
    for sets, line in (
        ({"lora": {"rank": 4, "dropout": 0.1}}, "lora.dropout: the JAX backend has no LoRA"),
        ({"lora": {"rank": 4, "dense_trainable": ["norm"]}}, "lora.dense_trainable: not supp"),
        (
            {"sparse": {"method": "random", "density": 0.1, "dense_trainable": ["norm"]}},
            "sparse.dense_trainable: not supp",
        ),
    ):
        with pytest.raises(UserError, match=line):
            refuse_unsupported(run_config(tiny_base, tmp_path / "out", **sets))


def test_existing_output_needs_overwrite(tiny_base, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert train(tmp_path, "taken", run_config(tiny_base, out)) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_deepspeed_json_sets_batches_optimizer_and_schedule(tiny_base, tmp_path, capsys):
    ds = {
        "train_batch_size": 4,
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "betas": [0.9, 0.95]}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 3}},
        "zero_optimization": {"stage": 1, "overlap_comm": True},
    }
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    out = tmp_path / "ds"
    cfg = run_config(tiny_base, out, train={"max_steps": 4})
    assert train(tmp_path, "ds", cfg, "--deepspeed_config", str(tmp_path / "ds.json")) == 0
    assert "zero_optimization.overlap_comm has no effect" in capsys.readouterr().err
    schedule = ScheduleConfig(type="warmup_lr", warmup_steps=3)
    want = [learning_rate(step, 2e-3, schedule, 4) for step in range(4)]
    assert [r["lr"] for r in rows(out) if "lr" in r] == want and len(set(want)) == 3


def test_missing_torch_extra_is_one_line_exit_1(tmp_path):
    code = (
        "import sys; sys.modules['deepspeed'] = None\n"
        "from torch_ref import cli; sys.exit(cli.main(['train']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "torch-ref: error: deepspeed is not installed; install the torch extra: "
        "pip install -e '.[torch]'"
    ]


def test_the_deepspeed_launchers_local_rank_flag_becomes_the_env(monkeypatch):
    from torch_ref.cli import launcher_rank

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    argv = ["--local_rank=1", "train", "run.yaml", "--overwrite"]
    assert launcher_rank(argv) == ["train", "run.yaml", "--overwrite"]
    assert os.environ["LOCAL_RANK"] == "1"
