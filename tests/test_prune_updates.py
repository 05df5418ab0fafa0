"""Pruning's in-step arithmetic against NumPy, and masks placed like their weights."""

import jax
import jax.numpy as jnp
import numpy as np
from train_fixtures import run_config

from interop.config_files import load_config
from interop.pruning.masks import Pruner
from interop.tiny_configs import tiny_config
from jax_sft.core.trees import dotted, leaf_at
from jax_sft.prune.bits import pack, pack_host, unpack, unpack_host
from jax_sft.prune.updates import group_shrink, soft_threshold
from jax_sft.train.run import make_engine


def test_soft_threshold_is_the_l1_proximal_step():
    w = np.array([-0.3, -0.05, 0.0, 0.02, 0.5], np.float32)
    got = np.asarray(soft_threshold(jnp.asarray(w), jnp.float32(0.1)))
    assert np.allclose(got, [-0.2, 0.0, 0.0, 0.0, 0.4], atol=1e-7)
    assert got[1] == 0.0 and got[3] == 0.0  # small weights land exactly on zero


def test_group_shrink_scales_each_structure_by_its_norm():
    """Group lasso over FFN neurons: each neuron's rows and column shrink together by
    max(0, 1 - t / ||neuron||), the norm taken over all three tensors."""
    c = {**tiny_config("tiny-llama"), "num_hidden_layers": 1}
    shapes = {
        "model.layers.0.mlp.gate_proj.weight": (128, 64),
        "model.layers.0.mlp.up_proj.weight": (128, 64),
        "model.layers.0.mlp.down_proj.weight": (64, 128),
    }
    (unit,) = Pruner(load_config(None, ["prune.pattern=rows"]).prune, c, shapes).units
    rng = np.random.default_rng(0)
    tensors = {n: rng.normal(size=s).astype(np.float32) * 0.05 for n, s in shapes.items()}
    norms = np.sqrt(
        np.sum(tensors["model.layers.0.mlp.gate_proj.weight"] ** 2, axis=1)
        + np.sum(tensors["model.layers.0.mlp.up_proj.weight"] ** 2, axis=1)
        + np.sum(tensors["model.layers.0.mlp.down_proj.weight"] ** 2, axis=0)
    )
    t = float(np.median(norms))  # about half the neurons go to exactly zero
    scale = np.maximum(0.0, 1.0 - t / norms)
    got = {n: jnp.asarray(x) for n, x in tensors.items()}
    group_shrink(unit, got, jnp.float32(t))
    up = np.asarray(got["model.layers.0.mlp.up_proj.weight"])
    down = np.asarray(got["model.layers.0.mlp.down_proj.weight"])
    assert np.allclose(up, tensors["model.layers.0.mlp.up_proj.weight"] * scale[:, None], atol=1e-6)
    assert np.allclose(down, tensors["model.layers.0.mlp.down_proj.weight"] * scale, atol=1e-6)
    zero = scale == 0
    assert 50 <= zero.sum() <= 78 and not np.any(up[zero]) and not np.any(down[:, zero])


def test_masks_are_placed_like_their_weights_under_zero3(tiny_base, tmp_path):
    """8 devices, ZeRO-3: every mask (packed, a bit per entry) and score has its weight's
    sharding, and steps with movement scores and group-lasso keep the pruned rows at 0."""
    cfg = run_config(
        tiny_base,
        tmp_path / "z3",
        parallel={"data": 8, "zero_stage": 3},
        train={"micro_batch_size": 1, "max_steps": 4},
        prune={
            "rules": [
                {"method": "movement", "pattern": "rows", "sparsity": 0.5, "start_step": 2},
                {
                    "method": "topk",
                    "pattern": "unstructured",
                    "sparsity": 0.25,
                    "modules": ["self_attn"],
                },
            ],
            "regularization": "group_lasso",
            "reg_weight": 0.01,
        },
    )
    engine = make_engine(cfg)
    params = engine.state["params"]
    masks = dotted(engine.state["masks"])
    assert len(masks) == 14  # 2 layers x (gate, up, down; q, k, v, o)
    for path, mask in masks.items():
        weight = leaf_at(params, path)
        assert mask.sharding == weight.sharding, path
        assert len(weight.sharding.device_set) == 8
        rows, width = weight.size // weight.shape[-1], weight.shape[-1]
        assert mask.dtype == jnp.uint8 and mask.nbytes == rows * -(-width // 8), path
    for path, score in dotted(engine.state["scores"]["entries"]).items():
        assert score.sharding == leaf_at(params, path).sharding, path
    for _ in range(4):
        engine.train_step()
    flat = dotted(jax.device_get(engine.state["params"]))
    moved = dotted(jax.device_get(engine.state["movement"]))
    for path, mask in engine.mode.host_masks(engine.state["masks"]).items():
        if "mlp" in path:
            assert mask.mean() == 0.5 and not np.any(flat[path][~mask]), path
            assert np.any(moved[path] != 0), path
    engine.close()


def test_bits_round_trip_for_any_width():
    rng = np.random.default_rng(1)
    for shape in [(3, 1), (2, 7), (5, 8), (4, 13), (9,)]:
        mask = rng.random(shape) < 0.5
        packed = pack_host(mask)
        assert packed.dtype == np.uint8 and packed.shape[-1] == -(-shape[-1] // 8)
        assert np.array_equal(unpack_host(packed, shape[-1]), mask)
        assert np.array_equal(np.asarray(unpack(pack(jnp.asarray(mask)), shape[-1])), mask)
