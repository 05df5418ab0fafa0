"""data_split against a literal transcription of DeepSpeed-Chat's index computation."""

import numpy as np
import pytest

from interop.data.split import phase_indices, split_bounds


def dschat_split_index(seed, data_split, split_index, data_size):
    """`get_raw_dataset_split_index` of dschat/utils/data/data_utils.py, minus the file cache."""
    splits = [float(s) for s in data_split.split(",")]
    splits_sum = sum(splits)
    splits = [split / splits_sum for split in splits]
    splits_index = [0]
    for index, split in enumerate(splits):
        splits_index.append(splits_index[index] + int(round(split * float(data_size))))
    diff = splits_index[-1] - data_size
    for index in range(1, len(splits_index)):
        splits_index[index] -= diff
    assert splits_index[-1] == data_size
    np_rng = np.random.RandomState(seed=seed)
    shuffle_idx = np.arange(start=0, stop=data_size, step=1, dtype=np.uint32)
    np_rng.shuffle(shuffle_idx)
    return shuffle_idx[splits_index[split_index] : splits_index[split_index + 1]].tolist()


CASES = [
    (100, "2,4,4", 1234),
    (7, "2,4,4", 0),
    (13, "6,2,2", 42),
    (1000, "10,0,0", 1234),
    (5, "1,1,1", 3),
    (2, "1,1,1", 1234),
    (37, "0.5,0.25,0.25", 7),
]


@pytest.mark.parametrize(("n", "split", "seed"), CASES)
def test_every_phase_matches_dschat(n, split, seed):
    for phase in (1, 2, 3):
        ours = phase_indices(n, split, phase, seed)
        assert ours.dtype == np.int64
        assert ours.tolist() == dschat_split_index(seed, split, phase - 1, n)


@pytest.mark.parametrize(("n", "split", "seed"), CASES)
def test_phases_partition_the_rows(n, split, seed):
    taken = np.concatenate([phase_indices(n, split, p, seed) for p in (1, 2, 3)])
    assert sorted(taken.tolist()) == list(range(n))


def test_rounding_error_lands_in_the_first_slice():
    assert split_bounds(2, "1,1,1") == [0, 0, 1, 2]
    assert split_bounds(10, "2,4,4") == [0, 2, 6, 10]
    assert phase_indices(2, "1,1,1", 1, 0).size == 0


def test_10_0_0_keeps_every_row_in_shuffled_order():
    ours = phase_indices(50, "10,0,0", 1, 1234)
    assert sorted(ours.tolist()) == list(range(50)) and ours.tolist() != list(range(50))
