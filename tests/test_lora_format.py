"""peft's LoRA adapter files, framework-free: writing, reading, refusing, merging."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from interop.checkpoints.formats import detect_format
from interop.errors import UserError
from interop.lora_format import (
    CONFIG,
    WEIGHTS,
    adapter_config,
    is_lora_adapter,
    merge_lora,
    read_adapter,
    scaling,
    write_adapter,
)

MODULE = "model.layers.0.self_attn.q_proj"


def _config(**changes) -> dict:
    base = adapter_config(
        r=2, alpha=3.0, dropout=0.0, target_modules=["q_proj"], fan_in_fan_out=False,
        base_model="base",
    )  # fmt: skip
    return {**base, **changes}


def _factors(in_features: int = 4, out_features: int = 6) -> dict:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, in_features)).astype(np.float32)
    b = rng.normal(size=(out_features, 2)).astype(np.float32)
    return {MODULE: (a, b)}


def test_write_read_round_trip_with_peft_key_names(tmp_path: Path):
    factors = _factors()
    write_adapter(tmp_path, factors, _config())
    keys = sorted(load_file(str(tmp_path / WEIGHTS)))
    assert keys == [f"base_model.model.{MODULE}.lora_A.weight",
                    f"base_model.model.{MODULE}.lora_B.weight"]  # fmt: skip
    config, back = read_adapter(tmp_path)
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 2 and config["lora_alpha"] == 3.0 and config["bias"] == "none"
    for got, want in zip(back[MODULE], factors[MODULE], strict=True):
        np.testing.assert_array_equal(got, want)
    assert is_lora_adapter(tmp_path) and detect_format(tmp_path) == "lora-adapter"


def test_sparse_adapters_are_not_lora(tmp_path: Path):
    (tmp_path / CONFIG).write_text(json.dumps({"adapter_type": "sparse"}))
    assert not is_lora_adapter(tmp_path) and detect_format(tmp_path) == "sparse-adapter"
    with pytest.raises(UserError, match="not a peft LoRA adapter"):
        read_adapter(tmp_path)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"rank_pattern": {"q_proj": 4}}, "patterns"),
        ({"bias": "all"}, "biases"),
    ],
)
def test_variants_beyond_plain_lora_are_refused(tmp_path: Path, changes, match):
    write_adapter(tmp_path, _factors(), _config(**changes))
    with pytest.raises(UserError, match=match):
        read_adapter(tmp_path)


def test_unpaired_or_foreign_tensors_are_refused(tmp_path: Path):
    (tmp_path / CONFIG).write_text(json.dumps(_config()))
    a, b = _factors()[MODULE]
    prefix = f"base_model.model.{MODULE}"
    for tensors, match in (
        ({f"{prefix}.lora_A.weight": a}, "no matching lora_B"),
        ({f"{prefix}.lora_B.weight": b}, "no matching lora_A"),
        ({f"{prefix}.lora_magnitude_vector": b[:, 0]}, "unexpected tensor"),
    ):
        save_file(tensors, str(tmp_path / WEIGHTS))
        with pytest.raises(UserError, match=match):
            read_adapter(tmp_path)


def test_merge_linear_and_conv1d_layouts():
    factors = _factors()
    a, b = factors[MODULE]
    weight = np.ones((6, 4), np.float32)  # nn.Linear: [out, in]
    merged = merge_lora({MODULE + ".weight": weight, "other": weight}, _config(), factors)
    np.testing.assert_allclose(merged[MODULE + ".weight"], weight + 1.5 * b @ a, rtol=1e-6)
    assert merged["other"] is weight
    conv = np.ones((4, 6), np.float16)  # Conv1D: [in, out]
    merged = merge_lora({MODULE + ".weight": conv}, _config(fan_in_fan_out=True), factors)
    got = merged[MODULE + ".weight"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, (conv + 1.5 * (b @ a).T).astype(np.float16))
    with pytest.raises(UserError, match="B @ A has shape"):
        merge_lora({MODULE + ".weight": weight}, _config(fan_in_fan_out=True), factors)
    with pytest.raises(UserError, match="no tensor"):
        merge_lora({}, _config(), factors)


def test_scaling_follows_peft():
    assert scaling({"r": 4, "lora_alpha": 8}) == 2.0
    assert scaling({"r": 4, "lora_alpha": 8, "use_rslora": True}) == 4.0


def test_imports_no_framework():
    code = "import sys, interop.lora_format; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert not {"jax", "torch", "flax"} & set(eval(loaded.stdout))
