"""LoRA parity with peft: our exported adapters load in `peft.PeftModel` and give our logits.

A tiny `transformers` model is saved, read into our JAX model, given non-zero random LoRA
factors and run with the adapters merged; the adapter we export is loaded onto the same
torch model with `PeftModel.from_pretrained`, and both forwards see the probe batch.
"""

import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from flax import nnx
from tiny_hf import VOCAB, hf_logits, make_model

from interop.adapter_config import LoraConfig
from interop.checkpoints.formats import detect_format
from interop.lora_format import merge_lora, read_adapter
from interop.probe import max_abs_logit_diff, probe_batch
from jax_sft.checkpoints.loading import read_checkpoint
from jax_sft.lora.mode import LoraTraining, init_trained
from jax_sft.lora.peft_io import export_peft, import_peft
from jax_sft.lora.targets import lora_targets
from jax_sft.models import registry

LOGIT_TOL = 1e-5
CASES = {
    "llama-gqa-untied": ["q_proj", "v_proj", "o_proj", "down_proj", "lm_head"],
    "opt-post-ln-proj": "all-linear",  # OPT's project_in / project_out included
    "qwen2": ["k_proj", "gate_proj", "up_proj"],  # Qwen2's q/k/v biases stay frozen
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # Conv1D: fan_in_fan_out
}


def _ours(torch_dir: Path) -> tuple[dict, dict, nnx.GraphDef, dict]:
    """(HF config, flat params, graphdef, nested params) of a saved HF model, read as
    `jax-sft` reads any checkpoint."""
    _, config, flat = read_checkpoint(torch_dir)
    graphdef, state = nnx.split(registry.model_from_flat(config, flat.items()))
    return config, flat, graphdef, nnx.to_pure_dict(state)


@pytest.mark.parametrize(
    ("name", "target_modules"),
    [
        ("llama-gqa-untied", ["q_proj", "lm_head", "nothing"]),
        ("llama-gqa-untied", ["layers.1.self_attn.k_proj", "mlp.down_proj"]),
        ("llama-gqa-untied", r".*\.1\.mlp\.(up|down)_proj"),
        ("opt-post-ln-proj", "all-linear"),
        ("gpt2", ["c_proj"]),
    ],
)
def test_targets_are_the_modules_peft_adapts(name, target_modules):
    torch_model = make_model(name)
    config = torch_model.config.to_dict()
    shapes, table = registry.expected_shapes(config), registry.name_table(config)
    ours = sorted(t.module for t in lora_targets(shapes, table, target_modules).values())
    lora = peft.LoraConfig(r=2, target_modules=target_modules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Conv1D: peft switches fan_in_fan_out on, and says so
        adapted = peft.get_peft_model(torch_model, lora).base_model.targeted_module_names
    assert ours == sorted(adapted)


def _logits(graphdef: nnx.GraphDef, params: dict, batch: dict) -> np.ndarray:
    model = nnx.merge(graphdef, params)
    args = (batch["input_ids"], batch["attention_mask"], batch["positions"])
    return np.asarray(model(*(jnp.asarray(x) for x in args)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_exported_adapter_matches_peft_logits(name, tmp_path: Path):
    torch_model = make_model(name)
    torch_model.save_pretrained(tmp_path / "base")
    config, flat, graphdef, params = _ours(tmp_path / "base")
    table = registry.name_table(config)
    cfg = LoraConfig(rank=4, alpha=12, target_modules=CASES[name])
    trained = init_trained(flat, table, cfg, seed=0)
    rng = np.random.default_rng(0)
    for factors in trained["lora"].values():
        factors["b"] = rng.normal(0.0, 0.3, factors["b"].shape).astype(np.float32)
    mode = LoraTraining(cfg.alpha / cfg.rank)
    batch = probe_batch(VOCAB)
    got = _logits(graphdef, jax.jit(mode.params)({"params": params, "trained": trained}), batch)

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    export_peft(adapter, trained["lora"], table, registry.expected_shapes(config), cfg, "base")
    assert detect_format(adapter) == "lora-adapter"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = peft.PeftModel.from_pretrained(torch_model, str(adapter)).eval()
    assert not [w for w in caught if "/peft/" in w.filename], "peft loads it without a warning"
    adapted = [m for m in peft_model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(adapted) == len(trained["lora"])
    want = hf_logits(peft_model, batch)
    mask = batch["attention_mask"]
    base = hf_logits(make_model(name), batch)
    assert max_abs_logit_diff(base, want, mask) > 0.1, "the adapters change the logits"
    assert max_abs_logit_diff(got, want, mask) <= LOGIT_TOL

    merged = peft_model.merge_and_unload().state_dict()
    base_hf = {k: v.numpy() for k, v in make_model(name).state_dict().items()}
    ours = merge_lora(base_hf, *read_adapter(adapter))
    for key, value in merged.items():
        np.testing.assert_allclose(ours[key], value.numpy(), atol=1e-6, err_msg=key)


def test_peft_saved_adapter_imports_to_the_same_logits(tmp_path: Path):
    torch_model = make_model("llama-gqa-untied")
    torch_model.save_pretrained(tmp_path / "base")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    peft_model = peft.get_peft_model(torch_model, lora)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if "lora_B" in pname:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(tmp_path / "adapter")
    batch = probe_batch(VOCAB)
    want = hf_logits(peft_model.eval(), batch)

    config, _, graphdef, params = _ours(tmp_path / "base")
    table, shapes = registry.name_table(config), registry.expected_shapes(config)
    adapter_config, factors = import_peft(tmp_path / "adapter", table, shapes)
    mode = LoraTraining(scale=adapter_config["lora_alpha"] / adapter_config["r"])
    got = _logits(
        graphdef, mode.params({"params": params, "trained": {"lora": factors, "dense": {}}}), batch
    )
    assert len(factors) == 4
    assert max_abs_logit_diff(got, want, batch["attention_mask"]) <= LOGIT_TOL
