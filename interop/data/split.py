"""DeepSpeed-Chat's `data_split`: which rows of a dataset a training phase sees.

A split "a,b,c" gives phases 1, 2 and 3 (SFT, reward model, RLHF) disjoint shares of
every dataset, computed as `dschat/utils/data/data_utils.py:
get_raw_dataset_split_index` does, so the same seed picks the same rows:

1. normalize the three numbers to fractions;
2. boundaries = cumulative sums of `int(round(fraction * n))` (Python's round: halves go
   to the even neighbour), starting at 0;
3. shift every boundary but the first by (last boundary - n), so the last equals n. The
   whole rounding error thus lands in the first slice: with n=2 and "1,1,1" the
   boundaries 0,1,2,3 become 0,0,1,2 and phase 1 gets nothing;
4. shuffle `arange(n)` (dtype uint32, int64 from 2**32-2 rows on) with
   `np.random.RandomState(seed).shuffle`; phase p takes the shuffled indices between
   boundaries p-1 and p, in that shuffled order.

DeepSpeed-Chat applies this to each dataset's train rows and, separately, to its eval rows.
"""

from __future__ import annotations

import numpy as np


def split_bounds(n: int, data_split: str) -> list[int]:
    """The four slice boundaries DeepSpeed-Chat computes for `n` rows and "a,b,c"."""
    parts = [float(s) for s in data_split.split(",")]
    total = sum(parts)
    fractions = [part / total for part in parts]
    bounds = [0]
    for fraction in fractions:
        bounds.append(bounds[-1] + int(round(fraction * float(n))))
    diff = bounds[-1] - n
    return [bounds[0]] + [bound - diff for bound in bounds[1:]]


def shuffle_index(n: int, seed: int) -> np.ndarray:
    """DeepSpeed-Chat's `get_shuffle_idx`: arange(n) shuffled by RandomState(seed)."""
    dtype = np.uint32 if n < np.iinfo(np.uint32).max - 1 else np.int64
    index = np.arange(n, dtype=dtype)
    np.random.RandomState(seed=seed).shuffle(index)
    return index


def phase_indices(n: int, data_split: str, phase: int, seed: int) -> np.ndarray:
    """Row indices (int64, shuffled order) that `phase` (1..3) takes out of `n` rows."""
    bounds = split_bounds(n, data_split)
    return shuffle_index(n, seed)[bounds[phase - 1] : bounds[phase]].astype(np.int64)
