"""Wanda, SparseGPT and per-row magnitude masks on one linear layer, against plain NumPy."""

import numpy as np
import pytest

from interop.errors import UserError
from interop.pruning.calibrated import (
    Hessian,
    InputNorms,
    hessian,
    input_norms,
    magnitude_mask,
    sparsegpt,
    wanda_mask,
)

OUT, IN, SAMPLES = 64, 128, 512


def layer(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """W [out, in] and correlated calibration inputs [samples, in]: 32 latent factors
    mixed into 128 inputs of different scales (as real activations have), plus noise."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(32, IN)) * rng.lognormal(sigma=0.5, size=IN)
    x = rng.normal(size=(SAMPLES, 32)) @ mixing / np.sqrt(32)
    x += 0.1 * rng.normal(size=(SAMPLES, IN))
    return rng.normal(size=(OUT, IN)).astype(np.float32), x.astype(np.float32)


def reference_row_mask(scores: np.ndarray, sparsity, n_m) -> np.ndarray:
    """Per row (or per group of m), Python's stable sort best first; keep the head."""
    mask = np.zeros(scores.shape, bool)
    width = n_m[1] if n_m else scores.shape[1]
    keep = n_m[0] if n_m else width - int(sparsity * width)
    for r in range(scores.shape[0]):
        for g in range(0, scores.shape[1], width):
            best = sorted(range(g, g + width), key=lambda j: -scores[r, j])
            mask[r, best[:keep]] = True
    return mask


def reference_sparsegpt(w, h, sparsity, n_m, mask_block, damp=0.01):
    """SparseGPT column by column: every update applied to all later columns at once
    (no blocks, no lazy batching); unstructured masks chosen every `mask_block` columns."""
    w, h = w.astype(np.float64), h.astype(np.float64)
    cols = w.shape[1]
    for j in range(cols):
        if h[j, j] == 0:
            h[j, j], w[:, j] = 1.0, 0.0
    h = h + damp * np.mean(np.diag(h)) * np.eye(cols)
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    mask = np.ones(w.shape, bool)
    for j in range(cols):
        if n_m is None and j % mask_block == 0:
            block = range(j, min(j + mask_block, cols))
            entries = [(r, c) for r in range(w.shape[0]) for c in block]
            ranked = sorted(entries, key=lambda e: -(w[e] ** 2) / u[e[1], e[1]] ** 2)
            for e in ranked[len(ranked) - int(sparsity * len(ranked)) :]:
                mask[e] = False
        if n_m is not None and j % n_m[1] == 0:
            group = slice(j, j + n_m[1])
            saliency = w[:, group] ** 2 / np.diag(u)[group] ** 2
            mask[:, group] = reference_row_mask(saliency, None, n_m)
        q = np.where(mask[:, j], w[:, j], 0.0)
        err = (w[:, j] - q) / u[j, j]
        w[:, j] = q
        w[:, j + 1 :] -= np.outer(err, u[j, j + 1 :])
    return w, mask


def test_norms_and_hessian_accumulate_over_batches():
    _, x = layer()
    norms, h = InputNorms(IN), Hessian(IN)
    for batch in np.split(x, 4):
        norms.add(batch.reshape(8, -1, IN))  # [batch, seq, in] is flattened to tokens
        h.add(batch)
    x64 = x.astype(np.float64)
    assert np.allclose(norms.norms(), np.linalg.norm(x64, axis=0), rtol=1e-12)
    assert np.allclose(input_norms(x), norms.norms(), rtol=1e-12)
    assert np.allclose(h.value(), 2.0 / SAMPLES * x64.T @ x64, rtol=1e-12)
    assert np.allclose(hessian(x), h.value(), rtol=1e-12)


@pytest.mark.parametrize("sparsity, n_m", [(0.5, None), (None, (2, 4)), (None, (4, 8))])
def test_wanda_matches_reference(sparsity, n_m):
    w, x = layer()
    scores = np.abs(w.astype(np.float64)) * np.linalg.norm(x.astype(np.float64), axis=0)
    got = wanda_mask(w, input_norms(x), sparsity=sparsity, n_m=n_m)
    assert np.array_equal(got, reference_row_mask(scores, sparsity, n_m))
    assert not np.array_equal(got, magnitude_mask(w, sparsity=sparsity, n_m=n_m))


def test_ties_keep_the_lower_column():
    w = np.ones((3, 8), np.float32)
    assert np.array_equal(magnitude_mask(w, sparsity=0.5)[0], [1, 1, 1, 1, 0, 0, 0, 0])
    assert np.array_equal(wanda_mask(w, np.ones(8), n_m=(1, 4))[2], [1, 0, 0, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("sparsity, zeros", [(0.3, 30), (0.29, 29), (0.555, 55), (0.7, 70)])
def test_each_row_prunes_floor_of_sparsity_times_in(sparsity, zeros):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 100))
    norms = rng.lognormal(size=100)
    for mask in (magnitude_mask(w, sparsity), wanda_mask(w, norms, sparsity)):
        assert (np.sum(~mask, axis=1) == zeros).all()


@pytest.mark.parametrize("n_m", [(2, 4), (4, 8)])
def test_every_group_keeps_exactly_n(n_m):
    w, x = layer()
    n, m = n_m
    repaired, gpt_mask = sparsegpt(w, hessian(x), n_m=n_m, block_size=32)
    masks = [magnitude_mask(w, n_m=n_m), wanda_mask(w, input_norms(x), n_m=n_m), gpt_mask]
    for mask in masks:
        assert (mask.reshape(OUT, IN // m, m).sum(axis=2) == n).all()
    assert ((repaired == 0).reshape(OUT, IN // m, m).sum(axis=2) >= m - n).all()


@pytest.mark.parametrize("sparsity, n_m", [(0.5, None), (None, (2, 4))])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(sparsity, n_m):
    w, x = layer()
    x64, w64 = x.astype(np.float64), w.astype(np.float64)

    def error(pruned):
        return np.linalg.norm(w64 @ x64.T - pruned.astype(np.float64) @ x64.T)

    repaired, mask = sparsegpt(w, hessian(x), sparsity=sparsity, n_m=n_m)
    assert repaired.dtype == np.float32 and (repaired[~mask] == 0).all()
    wanda = error(w * wanda_mask(w, input_norms(x), sparsity=sparsity, n_m=n_m))
    magnitude = error(w * magnitude_mask(w, sparsity=sparsity, n_m=n_m))
    assert error(repaired) < 0.7 * wanda and wanda < magnitude


@pytest.mark.parametrize("sparsity, n_m", [(0.5, None), (None, (2, 4))])
def test_sparsegpt_blocks_and_lazy_updates_match_the_plain_algorithm(sparsity, n_m):
    w, x = layer(2)
    x[:, 5] = 0.0  # a dead input: its column is dropped
    h = hessian(x)
    want_w, want_mask = reference_sparsegpt(w, h, sparsity, n_m, mask_block=16)
    got_w, got_mask = sparsegpt(w.astype(np.float64), h, sparsity, n_m, block_size=16)
    assert np.array_equal(got_mask, want_mask)
    assert np.linalg.norm(got_w - want_w) <= 1e-4 * np.linalg.norm(want_w)
    assert (got_w[:, 5] == 0).all()
    if n_m is not None:  # N:M masks do not depend on the block size at all
        whole_w, whole_mask = sparsegpt(w.astype(np.float64), h, n_m=n_m, block_size=IN)
        assert np.array_equal(whole_mask, got_mask)
        assert np.allclose(whole_w, got_w, rtol=0, atol=1e-9)


def test_bad_inputs_raise_user_errors():
    w = np.ones((4, 126))
    with pytest.raises(UserError, match=r"in = 126"):
        wanda_mask(w, np.ones(126), n_m=(2, 4))
    with pytest.raises(UserError, match=r"in = 126"):
        sparsegpt(w, np.eye(126), n_m=(2, 4))
    for shape in [(8,), (2, 4, 8)]:
        with pytest.raises(UserError, match=r"2-D weight, got shape"):
            sparsegpt(np.ones(shape), np.eye(8), sparsity=0.5)
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        magnitude_mask(w, sparsity=1.0)
    with pytest.raises(UserError, match="exactly one"):
        magnitude_mask(w, sparsity=0.5, n_m=(2, 4))
