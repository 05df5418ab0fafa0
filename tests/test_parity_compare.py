"""How `jax-sft parity` compares final weights: key-projection biases set apart.

The harness leaves the key-projection bias out of its parameter verdict because no
output depends on it; these tests check that claim against the `transformers` models
themselves and that `compare_params` separates exactly those entries.
"""

import numpy as np
import pytest
import torch
from tiny_hf import VOCAB, hf_logits, make_model

from interop.parity import compare_params, output_invariant_entries
from interop.probe import max_abs_logit_diff, probe_batch


def shifted(model, name: str, entries: slice | None, by: float):
    """`model` with `by` added to entries `entries` of parameter `name` (all if None)."""
    with torch.no_grad():
        param = dict(model.named_parameters())[name]
        param[entries if entries is not None else slice(None)] += by
    return model


@pytest.mark.parametrize(
    "family, bias, query",
    [
        ("opt-pre-ln", "model.decoder.layers.1.self_attn.k_proj.bias", "q_proj"),
        ("gpt2", "transformer.h.1.attn.c_attn.bias", "c_attn"),
    ],
)
def test_no_output_depends_on_the_entries_set_apart(family, bias, query):
    batch = probe_batch(VOCAB)
    mask = batch["attention_mask"]
    want = hf_logits(make_model(family), batch)
    size = dict(make_model(family).named_parameters())[bias].shape[0]
    entries = output_invariant_entries(make_model(family).config.model_type, bias, size)
    assert entries is not None
    moved = hf_logits(shifted(make_model(family), bias, entries, 1.0), batch)
    assert max_abs_logit_diff(moved, want, mask) <= 1e-5
    # The same shift on the query bias (GPT-2: the first third of the fused bias) does
    # change the outputs: the entries set apart are the keys', not any bias's.
    q_name = bias.replace("k_proj", query)
    q_entries = slice(0, size // 3) if query == "c_attn" else None
    changed = hf_logits(shifted(make_model(family), q_name, q_entries, 1.0), batch)
    assert max_abs_logit_diff(changed, want, mask) > 1e-2


def test_compare_params_judges_the_entries_outputs_depend_on(tmp_path):
    model = make_model("opt-pre-ln")
    model.save_pretrained(tmp_path / "a")
    shifted(model, "model.decoder.layers.0.self_attn.k_proj.bias", None, 0.5)
    shifted(model, "model.decoder.layers.1.self_attn.k_proj.bias", None, 0.25)
    with torch.no_grad():
        model.model.decoder.layers[1].fc2.weight[3, 5] += 1e-3
    model.save_pretrained(tmp_path / "b")
    report = compare_params(tmp_path / "a", tmp_path / "b")
    assert report["worst_tensor"] == "model.decoder.layers.1.fc2.weight"
    np.testing.assert_allclose(report["final_max_abs_param_diff"], 1e-3, rtol=1e-4)
    np.testing.assert_allclose(report["final_max_abs_invariant_diff"], 0.5, rtol=1e-6)
    assert report["invariant_tensors"] == [
        f"model.decoder.layers.{i}.self_attn.k_proj.bias" for i in (0, 1)
    ]
    assert report["per_tensor"]["model.decoder.layers.0.self_attn.k_proj.bias"] == 0.0


def test_a_rotary_key_bias_stays_in_the_verdict(tmp_path):
    # Qwen2 rotates each key, bias included, by its position: the bias is no constant
    # shift of a query's scores, outputs depend on it, and it is judged like any weight.
    name = "model.layers.0.self_attn.k_proj.bias"
    batch = probe_batch(VOCAB)
    want = hf_logits(make_model("qwen2"), batch)
    model = shifted(make_model("qwen2"), name, None, 1.0)
    assert max_abs_logit_diff(hf_logits(model, batch), want, batch["attention_mask"]) > 1e-2
    assert output_invariant_entries("qwen2", name, 32) is None
    make_model("qwen2").save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    report = compare_params(tmp_path / "a", tmp_path / "b")
    assert report["worst_tensor"] == name
    np.testing.assert_allclose(report["final_max_abs_param_diff"], 1.0, rtol=1e-6)
    assert report["final_max_abs_invariant_diff"] is None and report["invariant_tensors"] == []
