"""SquareHead distillation, as both backends compute it: the definition in NumPy.

Per transformer block l, per token, nmse_l = mean_d (s_l - t_l)^2 / (var_d t_l + EPS)
between the student's block output s_l and the frozen dense teacher's t_l; summed over
the layers and over the tokens the cross entropy scores (position t counts when label
t+1 is not ignored). The run's objective adds `prune.distill_weight` times this sum to
the summed token NLL. `jax_sft.prune.distill` and `torch_ref.train.distill` implement it
in their frameworks; the tests hold both to this one.
"""

from __future__ import annotations

import numpy as np

from interop.data.examples import IGNORE

EPS = 1e-8  # keeps a (never seen) constant hidden state from dividing by zero


def squarehead_sum(
    student: list[np.ndarray], teacher: list[np.ndarray], labels: np.ndarray
) -> float:
    """The summed per-layer normalised MSE over the scored tokens, in float64."""
    scored = labels[:, 1:] != IGNORE
    total = 0.0
    for s, t in zip(student, teacher, strict=True):
        s, t = s[:, :-1].astype(np.float64), t[:, :-1].astype(np.float64)
        nmse = np.mean((s - t) ** 2, axis=-1) / (np.var(t, axis=-1) + EPS)
        total += float(np.sum(nmse[scored]))
    return total
