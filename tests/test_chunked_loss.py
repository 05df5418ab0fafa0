"""The chunked loss: the plain loss's values and gradients without its logits in memory."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from train_fixtures import zero_micro_batch
from xla_settings import REAL_RUN

from interop.data.examples import IGNORE
from interop.tiny_configs import tiny_config
from jax_sft.core import chunked_loss
from jax_sft.core.chunked_loss import chunked_loss_sum_and_count
from jax_sft.core.forward import forward_loss
from jax_sft.core.loss import loss_sum_and_count
from jax_sft.models import registry


def plain(hidden, head, labels):
    return loss_sum_and_count(jnp.einsum("bse,ev->bsv", hidden, head), labels)


def test_chunked_loss_equals_the_plain_loss_and_its_gradients(monkeypatch):
    batch, seq, embed, vocab = 3, 50, 16, 96
    # 20 positions per chunk: three chunks, the last one padded.
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 4 * vocab * batch * 20)
    assert chunked_loss.chunk_length(batch, seq, vocab) == 20
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(keys[0], (batch, seq, embed))
    head = jax.random.normal(keys[1], (embed, vocab)) * 0.3
    labels = np.array(jax.random.randint(keys[2], (batch, seq), 0, vocab))
    labels[0, :10] = IGNORE  # an unscored prompt
    labels[2, 31:] = IGNORE  # right padding
    labels = jnp.asarray(labels)

    def total(loss):
        return lambda h, w: loss(h, w, labels)[0]

    ours = jax.jit(jax.value_and_grad(total(chunked_loss_sum_and_count), argnums=(0, 1)))
    (value, grads), (want, want_grads) = (
        ours(hidden, head),
        jax.value_and_grad(total(plain), argnums=(0, 1))(hidden, head),
    )
    np.testing.assert_allclose(value, want, rtol=1e-6)
    for got, expected in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    count = chunked_loss_sum_and_count(hidden, head, labels)[1]
    assert int(count) == int(plain(hidden, head, labels)[1]) == 3 * 49 - 9 - 19
    # Without a gradient (evaluation) the same value.
    np.testing.assert_allclose(jax.jit(total(chunked_loss_sum_and_count))(hidden, head), want)


def test_at_32k_vocabulary_and_sequence_2048_the_logits_never_exist_whole():
    config = tiny_config("tiny-llama")
    # One layer: the logits, not the depth, are what the two losses differ in.
    config.update(vocab_size=32000, max_position_embeddings=2048, num_hidden_layers=1)
    seq = 2048
    graphdef, params = nnx.split(registry.build_model(config, seed=0), nnx.Param)
    mb = zero_micro_batch(1, seq)

    def naive(params, mb):
        model = nnx.merge(graphdef, params)
        return loss_sum_and_count(model(mb["input_ids"], mb["attention_mask"]), mb["labels"])

    def temp_bytes(loss):
        # a real run's fusion (xla_settings.py)
        step = jax.jit(jax.grad(lambda p, mb: loss(p, mb)[0]), compiler_options=REAL_RUN)
        return step.lower(params, mb).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = seq * config["vocab_size"] * 4
    chunked = temp_bytes(lambda p, mb: forward_loss(graphdef, p, mb))
    plain_bytes = temp_bytes(naive)
    assert chunked <= plain_bytes - logits_bytes, (chunked, plain_bytes, logits_bytes)
