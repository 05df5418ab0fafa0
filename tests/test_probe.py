"""The probe batch and the difference measures that `compare` reports."""

import numpy as np

from interop.probe import max_abs_diff, max_abs_logit_diff, probe_batch


def test_max_abs_diff_counts_one_sided_nan_as_infinite():
    a = np.array([1.0, np.nan, 3.0], np.float32)
    assert max_abs_diff(a, a) == 0.0
    assert max_abs_diff(a, np.array([1.0, 2.0, 3.5], np.float32)) == np.inf
    assert max_abs_diff(a, np.array([1.0, np.nan, 3.5], np.float32)) == 0.5


def test_probe_batch_positions_follow_real_tokens():
    batch = probe_batch(50, seq_len=12)
    mask, pos = batch["attention_mask"], batch["positions"]
    assert mask[0].all() and not mask[1, -1] and not mask[2, 0]
    for row in range(4):
        assert list(pos[row][mask[row] == 1]) == list(range(int(mask[row].sum())))
    assert (batch["input_ids"][mask == 0] == 0).all()


def test_logit_diff_ignores_padding():
    batch = probe_batch(50, seq_len=8)
    a = np.zeros((4, 8, 3), np.float32)
    b = a.copy()
    b[batch["attention_mask"] == 0] = 100.0
    assert max_abs_logit_diff(a, b, batch["attention_mask"]) == 0.0
    b[0, 0, 1] = 0.25
    assert max_abs_logit_diff(a, b, batch["attention_mask"]) == 0.25
