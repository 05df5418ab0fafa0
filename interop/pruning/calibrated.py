"""Calibration-based pruning of one linear layer: Wanda and SparseGPT, in NumPy.

Magnitude pruning asks "is this weight small?"; a layer's output is y = x @ W.T, so what
matters is how much of y an entry carries on real inputs. Both methods here read that
from calibration activations X [n_samples, in] (rows are tokens) fed to the layer.

- **Wanda** (Sun et al. 2023) scores S_ij = |W_ij| * ||X_j||_2: a small weight on an
  input with large activations can matter more than a large weight on a quiet one. The
  scores are compared within each output row (each output neuron keeps the same count),
  and the kept weights are left unchanged. It needs only the per-input norms.
- **SparseGPT** (Frantar & Alistarh 2023) also *repairs* the weights. The layer-wise
  loss ||W X^T - W' X^T||^2 is quadratic with Hessian H = 2 X^T X (the same for every
  row). Removing weight w_q and optimally moving the others (Optimal Brain Surgeon)
  costs w_q^2 / [H^-1]_qq, and the repair is -w_q / [H^-1]_qq * H^-1[:, q]. Pruning the
  columns left to right, the inverse Hessians of the remaining columns are read off the
  rows of U, the upper Cholesky factor of H^-1 (H^-1 = U^T U), so one factorisation
  serves every column: column j's error err = (w_j - q_j) / U_jj is pushed onto the
  later columns through U[j, j+1:]. Inside a block of columns each update reaches the
  block's later columns at once; the columns after the block get the block's errors in
  one matrix product (lazy batching: the same arithmetic, regrouped). The mask is
  chosen on the repaired weights: for unstructured sparsity once per block, pruning the
  lowest w^2 / U_jj^2 over the whole block (all rows together, as the authors' code
  does); for N:M once per group of m columns, per row.

Counting: a row (Wanda, magnitude) or a SparseGPT block of k entries loses
floor(sparsity * k) of them (with a 1e-6 guard, so float noise such as 0.29 * 100 =
28.999... never moves it by one), the project's rule everywhere. N:M keeps n of every
m consecutive input columns of each row. Ties go to the lower index being kept (a
stable sort of the scores, best first), so equal inputs give equal masks. Masks have
W's shape, True = kept. SparseGPT's unstructured rows hold different counts; its
blocks hold the exact count (the authors' `<= threshold` would prune one more).
"""

from __future__ import annotations

import math

import numpy as np

from interop.errors import UserError

NM = tuple[int, int]


def _rows(x: np.ndarray, width: int) -> np.ndarray:
    """Activations [..., in] as float64 rows [tokens, in]."""
    x = np.asarray(x)
    if x.shape[-1:] != (width,):
        raise UserError(f"calibration inputs need {width} features, got shape {x.shape}")
    return x.reshape(-1, width).astype(np.float64)


class InputNorms:
    """Per-input sums of squares over calibration batches; `norms()` is Wanda's ||X_j||_2."""

    def __init__(self, in_features: int):
        self.square_sums = np.zeros(in_features, np.float64)

    def add(self, x: np.ndarray) -> None:
        rows = _rows(x, self.square_sums.shape[0])
        self.square_sums += np.einsum("ni,ni->i", rows, rows)

    def norms(self) -> np.ndarray:
        return np.sqrt(self.square_sums)


def input_norms(x: np.ndarray) -> np.ndarray:
    """||X_j||_2 over all samples of one batch of activations [..., in] (float64)."""
    acc = InputNorms(np.shape(x)[-1])
    acc.add(x)
    return acc.norms()


class Hessian:
    """SparseGPT's H = 2/n X^T X over calibration batches (n = rows seen, float64).

    2/n makes it the Hessian of the mean squared reconstruction error; the authors'
    code divides by sequences instead. Only a global scale, which changes nothing:
    damping is relative to mean(diag(H))."""

    def __init__(self, in_features: int):
        self.sum = np.zeros((in_features, in_features), np.float64)
        self.samples = 0

    def add(self, x: np.ndarray) -> None:
        rows = _rows(x, self.sum.shape[0])
        self.sum += rows.T @ rows
        self.samples += rows.shape[0]

    def value(self) -> np.ndarray:
        return self.sum * (2.0 / max(self.samples, 1))


def hessian(x: np.ndarray) -> np.ndarray:
    """SparseGPT's H = 2/n X^T X from one batch of activations [..., in]."""
    acc = Hessian(np.shape(x)[-1])
    acc.add(x)
    return acc.value()


def pruned_count(sparsity: float, items: int) -> int:
    """floor(sparsity * items), guarded against float noise (0.29 * 100 prunes 29)."""
    return math.floor(sparsity * items + 1e-6)


def _check(shape: tuple, sparsity: float | None, n_m: NM | None) -> None:
    """One clear line for a target that is not exactly one of sparsity / N:M, or bad."""
    if (sparsity is None) == (n_m is None):
        raise UserError("give exactly one of sparsity or n_m (N kept of every M)")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
    if n_m is not None:
        n, m = n_m
        if not 0 < n <= m:
            raise UserError(f"N:M needs 0 < N <= M, got {n}:{m}")
        if shape[-1] % m:
            raise UserError(
                f"N:M {n}:{m} needs the input dimension (in = {shape[-1]}) divisible by {m}"
            )


def _keep_top(scores: np.ndarray, keep: int) -> np.ndarray:
    """True at the `keep` highest scores along the last axis; ties keep the lower index."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    mask = np.zeros(scores.shape, bool)
    np.put_along_axis(mask, order[..., :keep], True, axis=-1)
    return mask


def _row_mask(scores: np.ndarray, sparsity: float | None, n_m: NM | None) -> np.ndarray:
    """Per-row mask of 2-D scores: each row prunes floor(sparsity * in), or keeps N of M."""
    _check(scores.shape, sparsity, n_m)
    if n_m is None:
        return _keep_top(scores, scores.shape[1] - pruned_count(sparsity, scores.shape[1]))
    n, m = n_m
    groups = scores.reshape(scores.shape[0], -1, m)
    return _keep_top(groups, n).reshape(scores.shape)


def magnitude_mask(
    weight: np.ndarray, sparsity: float | None = None, n_m: NM | None = None
) -> np.ndarray:
    """Per-row |W| mask [out, in], the data-free baseline the calibrated methods beat."""
    return _row_mask(np.abs(np.asarray(weight, np.float64)), sparsity, n_m)


def wanda_mask(
    weight: np.ndarray,
    norms: np.ndarray,
    sparsity: float | None = None,
    n_m: NM | None = None,
) -> np.ndarray:
    """Wanda's mask [out, in]: per row, the top |W_ij| * ||X_j||_2 (`norms` [in])."""
    w = np.abs(np.asarray(weight, np.float64))
    norms = np.asarray(norms, np.float64)
    if w.ndim != 2 or norms.shape != w.shape[1:]:
        raise UserError(f"Wanda needs W [out, in] and norms [in], got {w.shape}, {norms.shape}")
    return _row_mask(w * norms, sparsity, n_m)


def _upper_inverse_factor(h: np.ndarray) -> np.ndarray:
    """U, upper triangular, with U^T U = H^-1 (the paper's Cholesky of the inverse)."""
    try:
        lower_inv = np.linalg.inv(np.linalg.cholesky(h))
        return np.linalg.cholesky(lower_inv.T @ lower_inv).T
    except np.linalg.LinAlgError:
        raise UserError("SparseGPT: the Hessian is not positive definite; raise damp") from None


def sparsegpt(
    weight: np.ndarray,
    hessian: np.ndarray,
    sparsity: float | None = None,
    n_m: NM | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT on one layer: (repaired weight in W's dtype, mask); pruned entries are 0.

    `hessian` [in, in] is X^T X up to scale (see `Hessian`); dead inputs (H_jj = 0) get
    H_jj = 1 and W[:, j] = 0; H gains damp * mean(diag(H)) on its diagonal."""
    shape = np.shape(weight)
    if len(shape) != 2:
        raise UserError(f"SparseGPT needs a linear layer's 2-D weight, got shape {shape}")
    _check(shape, sparsity, n_m)
    cols = shape[1]
    if np.shape(hessian) != (cols, cols):
        raise UserError(f"SparseGPT: Hessian shape {np.shape(hessian)} != ({cols}, {cols})")
    if block_size < 1 or (n_m is not None and block_size % n_m[1]):
        raise UserError(f"SparseGPT: block_size {block_size} must be a positive multiple of M")
    w = np.array(weight, np.float64)
    h = np.array(hessian, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices(cols)] += damp * np.mean(np.diag(h))
    u = _upper_inverse_factor(h)
    mask = np.ones(w.shape, bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, ub = w[:, start:end], u[start:end, start:end]  # views: updates land in w
        d = np.diag(ub)
        if n_m is None:
            saliency = (block**2 / d**2).reshape(1, -1)
            keep = saliency.size - pruned_count(sparsity, saliency.size)
            mask[:, start:end] = _keep_top(saliency, keep).reshape(block.shape)
        errors = np.zeros_like(block)
        for i in range(end - start):
            if n_m is not None and i % n_m[1] == 0:
                n, m = n_m
                saliency = block[:, i : i + m] ** 2 / d[i : i + m] ** 2
                mask[:, start + i : start + i + m] = _keep_top(saliency, n)
            q = np.where(mask[:, start + i], block[:, i], 0.0)
            errors[:, i] = (block[:, i] - q) / d[i]
            block[:, i] = q
            block[:, i + 1 :] -= np.outer(errors[:, i], ub[i, i + 1 :])
        w[:, end:] -= errors @ u[start:end, end:]
    return w.astype(np.asarray(weight).dtype), mask
