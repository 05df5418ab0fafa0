"""Sparse deltas: the gradient of the values, exact merging, and choosing the entries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interop.adapter_config import SparseConfig
from interop.errors import UserError
from interop.tiny_configs import tiny_config
from jax_sft.models import registry
from jax_sft.sparse.deltas import apply_delta
from jax_sft.sparse.select import budget, proportional, select, targets

TARGET = "layers.0.self_attn.q_proj.kernel"


@pytest.fixture(scope="module")
def setup():
    config = tiny_config("tiny-llama")
    model = registry.build_model(config, seed=3)
    graphdef, state = nnx.split(model)
    flat = {k: np.asarray(v) for k, v in registry.flat_state(model).items()}
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 12)))
    return graphdef, state, flat, ids


def loss_with_weight(graphdef, state, ids, weight):
    pure = nnx.to_pure_dict(state)
    pure["layers"][0]["self_attn"]["q_proj"]["kernel"] = weight
    logits = nnx.merge(graphdef, pure)(ids)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])


def test_value_gradient_is_the_dense_gradient_at_the_indices(setup):
    graphdef, state, flat, ids = setup
    base = jnp.asarray(flat[TARGET])
    indices = jnp.asarray(np.sort(np.random.default_rng(1).choice(base.size, 40, replace=False)))
    values = jnp.zeros(40, jnp.float32) + 0.01

    def loss_of_values(v):
        return loss_with_weight(graphdef, state, ids, apply_delta(base, indices, v))

    grad_v = jax.grad(loss_of_values)(values)
    dense = jax.grad(lambda w: loss_with_weight(graphdef, state, ids, w))(
        apply_delta(base, indices, values)
    )
    np.testing.assert_allclose(grad_v, dense.reshape(-1)[indices], rtol=1e-6, atol=1e-9)
    assert float(jnp.abs(grad_v).max()) > 1e-4  # the gradient is not trivially zero
    # Central differences in fp32: the loss (~6) carries ~1e-6 of rounding, so with h = 0.05
    # a difference quotient is good to ~1e-5; the gradients checked are ~1e-4 to 1e-3.
    h = 0.05
    for i in np.argsort(-np.abs(np.asarray(grad_v)))[:3]:
        bump = jnp.zeros(40).at[i].set(h)
        fd = (loss_of_values(values + bump) - loss_of_values(values - bump)) / (2 * h)
        assert abs(float(fd) - float(grad_v[i])) <= 0.05 * abs(float(grad_v[i])) + 1e-5


def test_merge_touches_only_the_index_set_and_is_exact(setup):
    _, _, flat, _ = setup
    base = flat[TARGET]
    indices = np.array([0, 5, 77, base.size - 1], np.int32)
    values = np.array([0.5, -0.25, 1e-3, 3.0], np.float32)
    merged = np.asarray(apply_delta(jnp.asarray(base), indices, values))
    outside = np.ones(base.size, bool)
    outside[indices] = False
    assert np.array_equal(
        merged.reshape(-1)[outside].view(np.uint32), base.reshape(-1)[outside].view(np.uint32)
    )
    assert np.array_equal(merged.reshape(-1)[indices], base.reshape(-1)[indices] + values)


def test_static_selection_respects_the_budget(setup):
    _, _, flat, _ = setup
    cfg = SparseConfig(method="random", density=0.05)
    chosen = select(flat, cfg, seed=0)
    kernels = [p for p in flat if p.endswith("kernel") and "lm_head" not in p]
    assert set(chosen) == set(kernels)
    total = sum(flat[p].size for p in kernels)
    assert sum(len(i) for i in chosen.values()) == round(0.05 * total)
    for path, idx in chosen.items():
        assert idx.dtype == np.int32 and np.all(np.diff(idx) > 0)
        assert abs(len(idx) - 0.05 * flat[path].size) <= 1
    again = select(flat, cfg, seed=0)
    assert all(np.array_equal(again[p], chosen[p]) for p in chosen)

    top = select(flat, SparseConfig(method="magnitude", density=0.05), seed=0)
    w = np.abs(flat[TARGET].reshape(-1))
    assert w[top[TARGET]].min() >= np.delete(w, top[TARGET]).max()

    whole = select(flat, SparseConfig(method="magnitude", density=0.05, allocation="global"), 0)
    assert sum(len(i) for i in whole.values()) == round(0.05 * total)


def test_budgets_by_count_and_by_lora_rank(setup):
    _, _, flat, _ = setup
    shapes = {p: a.shape for p, a in flat.items()}
    chosen = targets(shapes, [r".*q_proj\.kernel"])
    assert chosen == ["layers.0.self_attn.q_proj.kernel", "layers.1.self_attn.q_proj.kernel"]
    lora = budget(shapes, chosen, SparseConfig(method="random", match_lora_rank=4))
    assert lora == 2 * 4 * (64 + 64)
    assert budget(shapes, chosen, SparseConfig(method="random", num_tunable=100)) == 100
    assert sum(proportional(shapes, chosen, 101).values()) == 101
    # A GPT-2 c_attn kernel is stored [in, 3, out]: one LoRA rank costs in + 3 x out.
    assert budget({"c_attn": (64, 3, 64)}, ["c_attn"], SparseConfig(match_lora_rank=2)) == 2 * (
        64 + 192
    )


def test_targets_that_match_nothing_list_the_parameters(setup):
    _, _, flat, _ = setup
    with pytest.raises(UserError) as err:
        targets({p: a.shape for p, a in flat.items()}, [r".*c_attn.*"])
    assert "matches no parameter" in str(err.value) and TARGET in str(err.value)


def test_bitfit_takes_every_bias_and_refuses_a_bias_free_model(setup):
    _, _, flat, _ = setup
    with pytest.raises(UserError, match="bitfit needs biases, and this model has none"):
        select(flat, SparseConfig(method="bitfit"), seed=0)
    gpt2 = registry.build_model(tiny_config("tiny-gpt2"))
    params = {k: np.asarray(v) for k, v in registry.flat_state(gpt2).items()}
    chosen = select(params, SparseConfig(method="bitfit"), seed=0)
    biases = [k for k in params if k.endswith(".bias")]
    assert sorted(chosen) == sorted(biases) and len(biases) > 5
    assert all(np.array_equal(chosen[k], np.arange(params[k].size)) for k in biases)


def test_a_tensor_left_without_entries_is_not_in_the_index_sets():
    params = {
        "a.kernel": np.full((8, 8), 5.0, np.float32),
        "b.kernel": np.full((8, 8), 0.1, np.float32),
    }
    cfg = SparseConfig(method="magnitude", num_tunable=10, allocation="global", target=[".*"])
    chosen = select(params, cfg, seed=0)
    assert list(chosen) == ["a.kernel"] and chosen["a.kernel"].size == 10
