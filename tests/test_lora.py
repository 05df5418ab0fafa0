"""LoRA on the JAX backend: target selection, factors, merged weights, the training mode."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interop.adapter_config import LoraConfig
from interop.config import RunConfig
from interop.errors import UserError
from interop.lora_format import merge_lora, read_adapter, scaling
from interop.tiny_configs import tiny_config
from jax_sft.lora.mode import LoraTraining, check, init_trained
from jax_sft.lora.params import apply_lora, init_lora, scale
from jax_sft.lora.peft_io import export_peft, import_peft
from jax_sft.lora.targets import lora_targets, matches, peft_target_modules
from jax_sft.models import registry
from jax_sft.models.hf_names import ours_to_hf


def _model(name: str) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(HF config, flat host params, nested params) of a randomly initialised tiny model."""
    config = tiny_config(name)
    model = registry.build_model(config, seed=1)
    flat = {p: np.asarray(v) for p, v in registry.flat_state(model).items()}
    nested = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return config, flat, nested


def _flatten(tree: dict) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {registry.path_str(tuple(k.key for k in path)): np.asarray(v) for path, v in leaves}


def _random_b(lora: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        p: {"a": f["a"], "b": rng.normal(0, 0.5, f["b"].shape).astype(np.float32)}
        for p, f in lora.items()
    }


def test_peft_matching_rule():
    name = "model.layers.0.self_attn.q_proj"
    assert matches(name, ["q_proj"]) and matches(name, ["self_attn.q_proj"])
    assert matches(name, ["layers.0.self_attn.q_proj"]) and matches(name, [name])
    assert not matches(name, ["proj"]) and not matches(name, ["layers.1.self_attn.q_proj"])
    assert not matches(name, ["_proj"]) and not matches(name, ["model.layers.0"])
    assert matches(name, r".*layers\.0\..*") and not matches(name, "q_proj")  # regex: full
    assert matches(name, "all-linear") and not matches("lm_head", "ALL-LINEAR")


def test_targets_by_family():
    config, flat, _ = _model("tiny-llama")
    shapes = {p: v.shape for p, v in flat.items()}
    table = registry.name_table(config)
    chosen = lora_targets(shapes, table, ["q_proj", "v_proj"])
    assert sorted(chosen) == [f"layers.{i}.self_attn.{p}_proj.kernel" for i in (0, 1) for p in "qv"]
    q = chosen["layers.0.self_attn.q_proj.kernel"]
    assert q.module == "model.layers.0.self_attn.q_proj" and not q.fan_in_fan_out
    assert (q.in_features, q.out_features) == shapes["layers.0.self_attn.q_proj.kernel"]
    every = lora_targets(shapes, table, "all-linear")
    assert len(every) == 2 * 7 and "lm_head.kernel" not in every
    assert "lm_head.kernel" in lora_targets(shapes, table, ["lm_head"])

    config = tiny_config("tiny-gpt2")
    shapes = registry.expected_shapes(config)
    table = registry.name_table(config)
    qkv = lora_targets(shapes, table, ["c_attn"])["h.0.attn.c_attn.kernel"]
    e = config["n_embd"]
    assert qkv.fan_in_fan_out and (qkv.in_features, qkv.out_features) == (e, 3 * e)


def test_no_match_lists_the_linear_layers():
    config = tiny_config("tiny-opt")
    shapes, table = registry.expected_shapes(config), registry.name_table(config)
    with pytest.raises(UserError) as err:
        lora_targets(shapes, table, ["query", "value"])
    message = str(err.value)
    assert message.startswith("lora.target_modules: ['query', 'value'] matches no linear layer")
    for name in ("q_proj", "v_proj", "out_proj", "fc1", "fc2"):
        assert name in message
    assert "model.decoder.layers.0." in message
    with pytest.raises(UserError, match="matches no linear layer"):
        lora_targets(shapes, table, ["embed_tokens"])  # embeddings are not linear layers


def test_export_names_select_exactly_the_adapted_layers():
    config = tiny_config("tiny-opt")
    shapes, table = registry.expected_shapes(config), registry.name_table(config)
    chosen = lora_targets(shapes, table, r".*decoder\.layers\..*")
    assert peft_target_modules(chosen, shapes, table) == [
        "fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj"
    ]  # fmt: skip
    one = lora_targets(shapes, table, ["layers.1.fc1"])
    assert peft_target_modules(one, shapes, table) == ["model.decoder.layers.1.fc1"]


def test_init_is_peft_default_and_seeded():
    config, flat, _ = _model("tiny-llama")
    shapes = {p: v.shape for p, v in flat.items()}
    targets = lora_targets(shapes, registry.name_table(config), ["q_proj", "down_proj"])
    lora = init_lora(targets, 8, seed=3)
    for path, f in lora.items():
        fan_in = shapes[path][0]
        assert f["a"].shape == (fan_in, 8) and f["a"].dtype == np.float32
        assert f["b"].shape == (8, int(np.prod(shapes[path][1:]))) and not f["b"].any()
        assert np.abs(f["a"]).max() <= 1 / np.sqrt(fan_in) < 2 * np.abs(f["a"]).max()
    again = init_lora({p: targets[p] for p in list(targets)[:1]}, 8, seed=3)
    path = next(iter(again))
    np.testing.assert_array_equal(again[path]["a"], lora[path]["a"])  # per-layer keys
    other = init_lora(targets, 8, seed=4)
    assert not np.array_equal(other[path]["a"], lora[path]["a"])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt", "tiny-gpt2"])
def test_zero_b_is_bit_identical_to_the_base(name):
    config, flat, nested = _model(name)
    cfg = LoraConfig(rank=4, alpha=8, target_modules="all-linear")
    trained = init_trained(flat, registry.name_table(config), cfg, seed=0)
    mode = LoraTraining(scale(cfg))
    out = _flatten(jax.jit(mode.params)({"params": nested, "trained": trained}))
    assert out.keys() == flat.keys()
    for path, value in flat.items():
        assert out[path].dtype == value.dtype
        np.testing.assert_array_equal(out[path], value, err_msg=path)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt", "tiny-gpt2"])
def test_merged_weights_are_w_plus_scaled_b_a_in_hf_layout(name, tmp_path: Path):
    config, flat, nested = _model(name)
    table, shapes = registry.name_table(config), registry.expected_shapes(config)
    targets = {"tiny-gpt2": ["c_attn", "c_fc"]}.get(name, ["q_proj", "v_proj", "fc2"])
    cfg = LoraConfig(rank=4, alpha=6, target_modules=targets)
    lora = _random_b(init_trained(flat, table, cfg, seed=0)["lora"])
    merged = _flatten(apply_lora(nested, lora, scale(cfg)))
    export_peft(tmp_path, lora, table, shapes, cfg)
    adapter_config, factors = read_adapter(tmp_path)
    assert scaling(adapter_config) == 1.5 and len(factors) == len(lora)
    base_hf, ours_hf = dict(ours_to_hf(table, flat)), dict(ours_to_hf(table, merged))
    for module, (a, b) in factors.items():
        delta = 1.5 * b.astype(np.float64) @ a.astype(np.float64)
        if name == "tiny-gpt2":
            delta = delta.T  # Conv1D weights are [in, out]
        np.testing.assert_allclose(
            ours_hf[module + ".weight"], base_hf[module + ".weight"] + delta, atol=1e-6
        )
    want = merge_lora(base_hf, adapter_config, factors)
    for hf_name, value in ours_hf.items():
        np.testing.assert_allclose(value, want[hf_name], atol=1e-6, err_msg=hf_name)


def test_import_round_trips_the_export(tmp_path: Path):
    config, flat, _ = _model("tiny-gpt2")
    table, shapes = registry.name_table(config), registry.expected_shapes(config)
    cfg = LoraConfig(rank=2, alpha=4, target_modules=["c_attn"])
    lora = _random_b(init_trained(flat, table, cfg, seed=0)["lora"])
    export_peft(tmp_path, lora, table, shapes, cfg, base_model="base")
    adapter_config, back = import_peft(tmp_path, table, shapes)
    assert adapter_config["fan_in_fan_out"] and adapter_config["base_model_name_or_path"] == "base"
    assert back.keys() == lora.keys()
    for path in lora:
        for k in ("a", "b"):
            np.testing.assert_array_equal(back[path][k], lora[path][k])
    with pytest.raises(UserError, match="not a linear layer of this model"):
        other = tiny_config("tiny-llama")
        import_peft(tmp_path, registry.name_table(other), registry.expected_shapes(other))


def test_training_mode_trees_and_gradients():
    config, flat, nested = _model("tiny-llama")
    table = registry.name_table(config)
    cfg = LoraConfig(rank=2, alpha=2, target_modules=["q_proj"], dense_trainable=[".*"])
    trained = init_trained(flat, table, cfg, seed=0)
    assert sorted(trained["lora"]) == ["layers.0.self_attn.q_proj.kernel",
                                       "layers.1.self_attn.q_proj.kernel"]  # fmt: skip
    assert set(trained["dense"]) == set(flat) - set(trained["lora"])  # adapted kernels frozen
    mode = LoraTraining(scale(cfg), table)
    assert mode.key == "trained" and mode.scale == 1.0 and mode.penalty(trained) is None
    mask = mode.decay_mask(trained)
    assert jax.tree.structure(mask) == jax.tree.structure(trained)
    assert all(jax.tree.leaves(mask["lora"]))
    assert mask["dense"]["layers.0.self_attn.k_proj.kernel"]
    assert not mask["dense"]["norm.scale"] and not mask["dense"]["layers.0.input_layernorm.scale"]

    state = {"params": nested, "trained": trained}
    ids = jnp.arange(8)[None] % config["vocab_size"]
    graphdef = nnx.split(registry.build_model(config))[0]

    def loss(t):
        model = nnx.merge(graphdef, mode.params(state, t))
        return jnp.mean(model(ids) ** 2)

    grads = jax.jit(jax.grad(loss))(trained)
    q = grads["lora"]["layers.0.self_attn.q_proj.kernel"]
    assert not np.asarray(q["a"]).any()  # b = 0: no gradient reaches a yet
    assert np.abs(np.asarray(q["b"])).max() > 0
    assert np.abs(np.asarray(grads["dense"]["layers.0.mlp.up_proj.kernel"])).max() > 0


def test_config_and_mode_refusals():
    assert LoraConfig().rank == 0 and LoraConfig().target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="invalid regex"):
        LoraConfig(target_modules="(q_proj")
    with pytest.raises(ValueError, match="at least one module"):
        LoraConfig(target_modules=[])
    with pytest.raises(ValueError, match="invalid regex"):
        LoraConfig(dense_trainable=["[x"])
    with pytest.raises(UserError, match="lora.dropout"):
        check(LoraConfig(rank=4, dropout=0.1))
    with pytest.raises(UserError, match="lora.rank"):
        check(LoraConfig())
    cfg = RunConfig.model_validate({"lora": {"rank": 8, "target_modules": "all-linear"}})
    assert cfg.lora.target_modules == "all-linear" and cfg.lora.learning_rate is None
