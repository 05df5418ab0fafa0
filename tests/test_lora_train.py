"""LoRA through the trainer: only the factors train and keep state, the exported adapter
loads in peft with our logits, the LoRA learning rate is its own, and a run can start
from a peft adapter."""

import json

import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from tiny_hf import hf_logits
from train_fixtures import run_config

from interop.checkpoints.hf import HFCheckpointReader
from interop.probe import max_abs_logit_diff, probe_batch
from jax_sft import cli
from jax_sft.train.run import make_engine, train

LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}


def _jax_logits(engine, batch):
    from flax import nnx

    model = nnx.merge(engine.graphdef, jax.jit(engine.mode.params)(engine.state))
    return np.asarray(
        model(
            batch["input_ids"].astype(np.int32),
            batch["attention_mask"].astype(np.int32),
            batch["positions"].astype(np.int32),
            None,
        )
    )


def test_a_jax_trained_lora_loads_in_peft_with_the_same_logits(tiny_base, tmp_path):
    cfg = run_config(tiny_base, tmp_path / "run", lora=LORA, train={"max_steps": 3})
    train(cfg)
    engine = make_engine(cfg)
    engine.restore_latest()
    trained = engine.state["trained"]
    assert set(trained) == {"lora", "dense"} and not trained["dense"]
    assert all(np.abs(np.asarray(f["b"])).max() > 0 for f in trained["lora"].values())
    opt_sizes = sorted(x.size for x in jax.tree.leaves(engine.state["opt_state"]) if x.ndim)
    factor_sizes = sorted(x.size for x in jax.tree.leaves(trained))
    assert opt_sizes == sorted(2 * factor_sizes)  # Adam moments for the factors only

    adapter = tmp_path / "run" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(base.eval(), adapter).eval()
    batch = probe_batch(engine.hf_config["vocab_size"])
    theirs = hf_logits(peft_model, batch)
    diff = max_abs_logit_diff(_jax_logits(engine, batch), theirs, batch["attention_mask"])
    assert diff <= 1e-5, diff
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf")
    mask = batch["attention_mask"]
    diff_merged = max_abs_logit_diff(hf_logits(merged.eval(), batch), theirs, mask)
    assert diff_merged <= 1e-5, diff_merged

    converted = tmp_path / "converted"
    argv = ["convert", str(adapter), str(converted), "--to", "hf", "--base", str(tiny_base)]
    assert cli.main(argv) == 0
    with HFCheckpointReader(converted) as a, HFCheckpointReader(tmp_path / "run" / "hf") as b:
        assert a.names() == b.names()
        assert max(float(np.abs(a.get(n) - b.get(n)).max()) for n in a.names()) <= 1e-6


def test_lora_learning_rate_scales_the_factor_updates_only(tiny_base, tmp_path):
    def first_update(lora_lr, out):
        lora = {**LORA, "dense_trainable": [".*norm.*"], "learning_rate": lora_lr}
        engine = make_engine(run_config(tiny_base, tmp_path / out, lora=lora))
        before = jax.device_get(engine.state["trained"])
        engine.train_step()
        after = jax.device_get(engine.state["trained"])
        return jax.tree.map(lambda a, b: b - a, before, after)

    same, tenfold = first_update(None, "same"), first_update(1e-2, "ten")  # optim lr is 1e-3
    for path, f in same["lora"].items():
        np.testing.assert_allclose(tenfold["lora"][path]["a"], 10 * f["a"], rtol=1e-4, atol=1e-9)
    for path, leaf in same["dense"].items():
        np.testing.assert_allclose(tenfold["dense"][path], leaf, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("continue_lora", [True, False])
def test_a_run_starts_from_a_peft_adapter(tiny_base, tmp_path, continue_lora):
    cfg = run_config(tiny_base, tmp_path / "first", lora=LORA, train={"max_steps": 2})
    train(cfg)
    adapter, merged_dir = tmp_path / "first" / "adapter", tmp_path / "first" / "hf"
    reference = make_engine(run_config(merged_dir, tmp_path / "ref")).evaluate()["eval_loss"]
    sections = {"lora": LORA} if continue_lora else {}
    engine = make_engine(run_config(adapter, tmp_path / "again", **sections))
    assert engine.model_dir == tiny_base
    assert engine.mode.key == ("trained" if continue_lora else "params")
    assert engine.evaluate()["eval_loss"] == pytest.approx(reference, rel=1e-6)
