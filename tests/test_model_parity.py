"""Our Flax models vs the `transformers` PyTorch models on the same weights (fp32)."""

import jax.numpy as jnp
import numpy as np
import pytest
from tiny_hf import CONFIGS, VOCAB, hf_logits, make_model

from interop.probe import max_abs_logit_diff, probe_batch
from jax_sft.models import registry
from jax_sft.models.hf_names import hf_to_ours

LOGIT_TOL = 1e-5


def flax_from_torch(model):
    config = model.config.to_dict()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    pairs = hf_to_ours(
        registry.name_table(config), state.items(), registry.expected_shapes(config), "state_dict"
    )
    return registry.model_from_flat(config, pairs)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(name):
    torch_model = make_model(name)
    ours = flax_from_torch(torch_model)
    batch = probe_batch(VOCAB)
    mask = batch["attention_mask"]
    assert mask[1, -1] == 0 and mask[2, 0] == 0, "probe batch has right and left padding"
    got = np.asarray(ours(jnp.asarray(batch["input_ids"]), jnp.asarray(mask)))
    want = hf_logits(torch_model, batch)
    assert np.abs(want).max() > 1.0, "weights are large enough for the comparison to mean something"
    assert max_abs_logit_diff(got, want, mask) <= LOGIT_TOL


def test_left_padding_does_not_change_real_token_logits():
    ours = flax_from_torch(make_model("llama-gqa-untied"))
    batch = probe_batch(VOCAB)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    row = 2  # left-padded
    real = mask[row].astype(bool)
    padded = np.asarray(ours(jnp.asarray(ids[row : row + 1]), jnp.asarray(mask[row : row + 1])))[0]
    alone = np.asarray(ours(jnp.asarray(ids[row : row + 1, real])))[0]
    np.testing.assert_allclose(padded[real], alone, atol=1e-5)


def test_segments_do_not_attend_across_each_other():
    ours = flax_from_torch(make_model("qwen2"))
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, VOCAB, 5), rng.integers(0, VOCAB, 7)
    packed = np.concatenate([a, b])[None]
    segments = np.array([[1] * 5 + [2] * 7])
    mask = np.ones_like(packed)
    got = np.asarray(
        ours(jnp.asarray(packed), jnp.asarray(mask), segment_ids=jnp.asarray(segments))
    )[0]
    alone_b = np.asarray(ours(jnp.asarray(b[None])))[0]
    alone_a = np.asarray(ours(jnp.asarray(a[None])))[0]
    np.testing.assert_allclose(got[:5], alone_a, atol=1e-5)
    np.testing.assert_allclose(got[5:], alone_b, atol=1e-5)


def test_mistral_sliding_window_longer_than_sequence_is_refused():
    from interop.errors import UserError

    config = dict(make_model("mistral").config.to_dict(), sliding_window=8)
    model = registry.build_model(config)
    with pytest.raises(UserError, match="sliding_window 8"):
        model(jnp.zeros((1, 9), jnp.int32))
    assert model(jnp.zeros((1, 8), jnp.int32)).shape == (1, 8, VOCAB)
