"""Batches: static shapes, padding, packing with segments, purity in (seed, step)."""

import numpy as np
import pytest

from interop.data.batches import KEYS, Batches
from interop.data.examples import IGNORE, Example

PAD = 0


def make(lengths, masked_prefix=0):
    """Examples whose ids encode (example, position): 1000 * (i + 1) + t."""
    out = []
    for i, n in enumerate(lengths):
        ids = (1000 * (i + 1) + np.arange(n)).astype(np.int32)
        labels = ids.copy()
        labels[:masked_prefix] = IGNORE
        out.append(Example(ids, labels))
    return out


def example_of(token):
    return int(token) // 1000 - 1


LENGTHS = [5, 3, 8, 2, 7, 4, 6, 1, 3, 5, 8]


def batches(examples, **kw):
    args = dict(batch_size=3, seq_len=8, pad_id=PAD, packing=False, seed=7)
    return Batches(examples, **{**args, **kw})


def test_padded_batches_shapes_and_last_batch_filler():
    b = batches(make(LENGTHS))
    assert b.num_examples == 11 and b.steps_per_epoch == 4
    last = b.batch(3)
    assert set(last) == set(KEYS)
    assert all(v.shape == (3, 8) and v.dtype == np.int32 for v in last.values())
    filler = last["attention_mask"].sum(axis=1) == 0
    assert filler.sum() == 1  # 11 examples: the 12th row is empty
    row = int(np.flatnonzero(filler)[0])
    assert (last["input_ids"][row] == PAD).all() and (last["labels"][row] == IGNORE).all()
    assert (last["segment_ids"][row] == 0).all() and (last["positions"][row] == 0).all()


def test_padded_rows_are_right_padded_examples():
    b = batches(make(LENGTHS), pad_id=99)
    batch = b.batch(0)
    for r in range(3):
        n = int(batch["attention_mask"][r].sum())
        i = example_of(batch["input_ids"][r, 0])
        assert n == LENGTHS[i]
        assert (batch["attention_mask"][r, :n] == 1).all() and (
            batch["input_ids"][r, n:] == 99
        ).all()
        np.testing.assert_array_equal(batch["labels"][r, :n], batch["input_ids"][r, :n])
        assert (batch["labels"][r, n:] == IGNORE).all()
        np.testing.assert_array_equal(batch["positions"][r, :n], np.arange(n))
        assert (batch["segment_ids"][r, :n] == 1).all() and (batch["segment_ids"][r, n:] == 0).all()


def seen(b, epoch):
    """Example ids of one epoch, in order of appearance (from the first token of segments)."""
    out = []
    for step in range(epoch * b.steps_per_epoch, (epoch + 1) * b.steps_per_epoch):
        batch = b.batch(step)
        starts = (batch["positions"] == 0) & (batch["attention_mask"] == 1)
        out += [example_of(t) for t in batch["input_ids"][starts]]
    return out


@pytest.mark.parametrize("packing", [False, True])
def test_every_example_once_per_epoch_and_orders_differ(packing):
    b = batches(make(LENGTHS), packing=packing)
    first, second = seen(b, 0), seen(b, 1)
    assert sorted(first) == sorted(second) == list(range(len(LENGTHS)))
    assert first != second


@pytest.mark.parametrize("packing", [False, True])
def test_batch_is_a_pure_function_of_seed_and_step(packing):
    a, b = batches(make(LENGTHS), packing=packing), batches(make(LENGTHS), packing=packing)
    for step in (5, 0, 13, 5):
        x, y = a.batch(step), b.batch(step)
        assert all(np.array_equal(x[k], y[k]) for k in KEYS)
    other = batches(make(LENGTHS), packing=packing, seed=8)
    assert seen(other, 0) != seen(a, 0)


def test_unshuffled_keeps_the_given_order():
    b = batches(make(LENGTHS), shuffle=False)
    assert seen(b, 0) == seen(b, 1) == list(range(len(LENGTHS)))


def test_packing_segments_positions_and_boundary_labels():
    ex = make(LENGTHS)
    b = batches(ex, packing=True, seq_len=12)
    assert b.steps_per_epoch < batches(ex, seq_len=12).steps_per_epoch
    for step in range(b.steps_per_epoch):
        batch = b.batch(step)
        for r in range(3):
            seg, pos, ids = batch["segment_ids"][r], batch["positions"][r], batch["input_ids"][r]
            real = batch["attention_mask"][r] == 1
            assert (seg[~real] == 0).all() and (ids[~real] == PAD).all()
            n = int(real.sum())
            assert real[:n].all()  # segments are contiguous from the left
            for s in range(1, int(seg.max()) + 1):
                where = np.flatnonzero(seg == s)
                i = example_of(ids[where[0]])
                np.testing.assert_array_equal(ids[where], ex[i].input_ids)
                np.testing.assert_array_equal(pos[where], np.arange(len(where)))
                assert batch["labels"][r, where[0]] == IGNORE
                np.testing.assert_array_equal(batch["labels"][r, where[1:]], ex[i].labels[1:])


@pytest.mark.parametrize("masked_prefix", [0, 2])
def test_packed_and_unpacked_score_the_same_tokens(masked_prefix):
    ex = make(LENGTHS, masked_prefix=masked_prefix)
    totals = []
    for packing in (False, True):
        b = batches(ex, packing=packing, seq_len=16, shuffle=False)
        totals.append(sum(Batches.loss_tokens(b.batch(s)) for s in range(b.steps_per_epoch)))
    expected = sum(max(0, n - max(1, masked_prefix)) for n in LENGTHS)
    assert totals == [expected, expected]


def test_too_long_example_is_refused():
    with pytest.raises(ValueError, match="more than seq_len 4"):
        batches(make([5]), seq_len=4)


@pytest.mark.parametrize("packing", [False, True])
def test_a_process_fills_only_its_own_rows(packing):
    b = batches(make(LENGTHS), batch_size=4, packing=packing)
    full, mine = b.batch(1), b.batch(1, rows=[1, 3, 9])  # row 9 lies outside the batch
    for key in KEYS:
        np.testing.assert_array_equal(mine[key][[1, 3]], full[key][[1, 3]])
    assert full["attention_mask"][[0, 2]].any()
    assert (mine["attention_mask"][[0, 2]] == 0).all() and (mine["labels"][[0, 2]] == IGNORE).all()
