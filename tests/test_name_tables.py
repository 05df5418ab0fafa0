"""Each family's name table covers exactly the tensors `transformers` saves, both ways."""

import numpy as np
import pytest
from tiny_hf import CONFIGS, make_model

from interop.errors import UserError
from jax_sft.models import registry
from jax_sft.models.hf_names import hf_to_ours, ours_to_hf


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_covers_the_saved_state_dict(name):
    model = make_model(name)
    config = model.config.to_dict()
    saved = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = dict(
        hf_to_ours(
            registry.name_table(config), saved.items(), registry.expected_shapes(config), "sd"
        )
    )
    back = dict(ours_to_hf(registry.name_table(config), ours))
    # Everything we write is something transformers saves, bit for bit.
    assert set(back) <= set(saved)
    for key, value in back.items():
        assert value.shape == saved[key].shape and np.array_equal(value, saved[key]), key
    # What we leave out is only a tied head (transformers re-ties it on load).
    assert set(saved) - set(back) <= {"lm_head.weight"}


def test_bare_base_model_names_are_accepted():
    model = make_model("opt-pre-ln")
    config = model.config.to_dict()
    bare = {k.removeprefix("model."): v.numpy() for k, v in model.state_dict().items()}
    assert any(k.startswith("decoder.") for k in bare)
    ours = dict(
        hf_to_ours(
            registry.name_table(config), bare.items(), registry.expected_shapes(config), "sd"
        )
    )
    assert set(ours) == set(registry.expected_shapes(config))


def test_wrong_shape_is_named_with_expected_and_found():
    model = make_model("llama-gqa-untied")
    config = model.config.to_dict()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    name = "model.layers.1.mlp.up_proj.weight"
    state[name] = state[name][:, :-1]
    with pytest.raises(UserError) as err:
        dict(
            hf_to_ours(
                registry.name_table(config), state.items(), registry.expected_shapes(config), "ckpt"
            )
        )
    assert str(err.value) == f"ckpt: tensor {name} has shape (48, 31), expected (48, 32)"


def test_missing_and_unexpected_tensors_are_named():
    model = make_model("gpt2")
    config = model.config.to_dict()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    table, shapes = registry.name_table(config), registry.expected_shapes(config)
    missing = {k: v for k, v in state.items() if k != "transformer.ln_f.bias"}
    with pytest.raises(UserError, match="missing tensor transformer.ln_f.bias"):
        dict(hf_to_ours(table, missing.items(), shapes, "ckpt"))
    extra = dict(state, **{"transformer.h.9.ln_1.weight": state["transformer.ln_f.weight"]})
    with pytest.raises(UserError, match="unexpected tensor transformer.h.9.ln_1.weight"):
        dict(hf_to_ours(table, extra.items(), shapes, "ckpt"))


def test_unsupported_model_type_lists_the_supported_ones():
    with pytest.raises(UserError) as err:
        registry.family_of({"model_type": "bert"})
    assert "unsupported model_type 'bert'" in str(err.value)
    for kind in ("gpt2", "llama", "mistral", "opt", "qwen2"):
        assert kind in str(err.value)
