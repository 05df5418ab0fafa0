"""FISH-mask scores: the diagonal empirical Fisher of the targeted weights.

For each of `sparse.fisher_samples` training examples, the gradient of that example's
mean token loss with respect to the weights, squared; summed over examples. The entries
with the largest sums are the ones the data is most sensitive to (Sung et al. 2021).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interop.data.batches import Batches
from jax_sft.core.loss import loss_sum_and_count
from jax_sft.core.trees import dotted


def fisher_scores(
    graphdef: nnx.GraphDef, params: Mapping, examples: Batches, targets: list[str], samples: int
) -> dict[str, np.ndarray]:
    """{path: sum over examples of the squared per-example gradient} for the targets."""

    def squared_grad(p: Mapping, row: dict) -> dict:
        def loss(q: Mapping) -> jax.Array:
            s, n = loss_sum_and_count(
                nnx.merge(graphdef, q)(
                    row["input_ids"], row["attention_mask"], row["positions"], row["segment_ids"]
                ),
                row["labels"],
            )
            return s / jnp.maximum(n, 1)

        flat = dotted(jax.grad(loss)(p))
        return {t: jnp.square(flat[t]) for t in targets}

    step = jax.jit(squared_grad)
    total = {t: 0.0 for t in targets}
    for i in range(min(samples, examples.steps_per_epoch)):
        row = examples.batch(i)
        total = {t: total[t] + g for t, g in step(params, row).items()}
    return {t: np.asarray(v, np.float32) for t, v in total.items()}
