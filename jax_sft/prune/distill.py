"""SquareHead: per-layer distillation from the dense model while the pruned one fine-tunes.

Kurtic et al. 2023 ("Sparse Fine-tuning for Inference Acceleration of Large Language
Models") recover a pruned model's quality by matching, layer by layer, its hidden states
to the dense model's: for each transformer block l the student's output s_l is compared
with the frozen teacher's t_l by a mean squared error divided by the teacher's variance,
so that every layer weighs alike whatever the scale of its residual stream.

The definition both backends share (`interop.pruning.distill` states it in NumPy):
- s_l, t_l: block l's output, the residual stream after the block and before any final
  norm, for l = 1..L; the teacher is the model the run started from, before any cut.
- per token: nmse_l = mean_d (s_l - t_l)^2 / (var_d t_l + EPS), the variance over the
  hidden features of that token; summed over the layers.
- over the tokens the cross entropy scores (positions whose next label is not ignored),
  summed: the term is a sum over tokens like the cross entropy, so accumulation and data
  parallelism divide both by the same global count of scored tokens (the paper's variance
  is over a batch, which would make the update depend on how a batch is split).
- objective = sum of token NLLs + weight x that sum; "distill" is logged per scored token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from interop.data.examples import IGNORE
from interop.pruning.distill import EPS
from jax_sft.core.forward import forward_hidden, forward_loss
from jax_sft.models.layers import block_outputs


def squarehead_sum(
    student: list[jax.Array], teacher: list[jax.Array], labels: jax.Array
) -> jax.Array:
    """The summed per-layer normalised MSE over the scored tokens of a micro-batch."""
    scored = (labels[:, 1:] != IGNORE).astype(jnp.float32)
    total = jnp.zeros((), jnp.float32)
    for s, t in zip(student, teacher, strict=True):
        s, t = s[:, :-1].astype(jnp.float32), t[:, :-1].astype(jnp.float32)
        nmse = jnp.mean(jnp.square(s - t), axis=-1) / (jnp.var(t, axis=-1) + EPS)
        total = total + jnp.sum(nmse * scored)
    return total


def distilled_loss(
    graphdef: nnx.GraphDef, student: dict, teacher: dict, mb: dict, weight: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(NLL sum + weight x SquareHead sum, {"loss": NLL sum, "distill": SquareHead sum})
    of one micro-batch; no gradient reaches the teacher."""
    with block_outputs() as ours:
        nll, _ = forward_loss(graphdef, student, mb)
    with block_outputs() as dense:
        forward_hidden(graphdef, jax.lax.stop_gradient(teacher), mb)
    term = squarehead_sum(ours, dense, mb["labels"])
    return nll + weight * term, {"loss": nll, "distill": term}
