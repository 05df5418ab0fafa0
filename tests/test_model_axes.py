"""Every parameter of every family carries one logical axis name per dimension."""

import pytest
from flax import nnx
from tiny_hf import CONFIGS

from jax_sft.models import registry

LOGICAL = {"vocab", "embed", "heads", "kv_heads", "mlp", None}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_params_have_logical_axes(name):
    config = CONFIGS[name]().to_dict()
    model = nnx.eval_shape(lambda: registry.build_model(config))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(params) > 10
    for path, var in params:
        axes = var.get_metadata().get("axes")
        assert axes is not None and len(axes) == len(var.get_value().shape), path
        assert set(axes) <= LOGICAL, (path, axes)
        assert any(a is not None for a in axes), (path, axes)
