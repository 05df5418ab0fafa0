"""Fixed-shape batches that are a pure function of (seed, step).

Every batch is `[batch_size, seq_len]` int32 (right padding, so one compilation):

    input_ids       pad_id where padding
    attention_mask  1 real token, 0 padding
    labels          aligned with input_ids (HF convention, the loss shifts); -100 = ignored
    positions       0, 1, ... within each example (segment); 0 on padding
    segment_ids     1, 2, ... per example within a row; 0 on padding

Order. Epoch e = step // steps_per_epoch visits the rows in the order of
`np.random.default_rng([seed, e]).permutation`, so two processes (or two backends) that
share the seed see identical batches, any step can be recomputed alone (resume after a
crash), and no global RNG is touched. The last batch of an epoch is topped up with empty
rows (all padding, labels -100), which add nothing to a token-averaged loss.

Packing. Examples are laid greedily, in order, into rows of `seq_len` tokens (a new row
starts when the next example does not fit). The packing is computed once, over a
permutation seeded by `[seed, PACK_STREAM]` (or in the given order when shuffle is off),
and the epochs permute the packed rows: the number of rows, hence steps_per_epoch, is then
the same every epoch. The first token of every segment gets label -100: a shifted loss
would otherwise predict it from the previous example's last token, and unpacked it sits
at position 0, which a shifted loss never predicts. So packed and unpacked batches score
the same tokens, and with attention kept inside segments, give the same loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interop.data.examples import IGNORE, Example
from interop.data.token_table import ExampleList

PACK_STREAM = 2**31 - 1  # seeds the packing order apart from every epoch's order
KEYS = ("input_ids", "attention_mask", "labels", "positions", "segment_ids")


class Batches:
    """Deterministic padded (or packed) batches over a list of examples."""

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        batch_size: int,
        seq_len: int,
        pad_id: int,
        packing: bool,
        seed: int,
        shuffle: bool = True,
    ):
        if not len(examples):
            raise ValueError("Batches needs at least one example")
        lengths = example_lengths(examples)
        if lengths.max() > seq_len:
            raise ValueError(f"an example has {lengths.max()} tokens, more than seq_len {seq_len}")
        self.examples = examples
        self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
        self.packing, self.seed, self.shuffle = packing, seed, shuffle
        self._rows: list[list[int]] | None = None  # unpacked: row i is example i
        self._order: tuple[tuple[int, int] | None, np.ndarray | None] = (None, None)
        rows = len(examples)
        if packing:
            order = self._permutation(PACK_STREAM, len(examples))
            self._rows = _pack(lengths[order].tolist(), seq_len, order)
            rows = len(self._rows)
        self.steps_per_epoch = -(-rows // batch_size)

    @property
    def num_examples(self) -> int:
        """How many examples one epoch visits."""
        return len(self.examples)

    def batch(self, step: int, rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """The batch of global step `step` (any step; epochs repeat with new orders).
        With `rows`, only those rows of it are filled (the rest stay empty): a process
        reads the examples of its own shards only."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = self._permutation(epoch, len(self.examples if self._rows is None else self._rows))
        out = {key: np.zeros((self.batch_size, self.seq_len), np.int32) for key in KEYS}
        out["input_ids"][:] = self.pad_id
        out["labels"][:] = IGNORE
        chosen = order[index * self.batch_size : (index + 1) * self.batch_size]
        wanted = range(len(chosen)) if rows is None else [r for r in rows if r < len(chosen)]
        for r in wanted:
            row, start = chosen[r], 0
            for segment, i in enumerate([row] if self._rows is None else self._rows[row], 1):
                example = self.examples[i]
                end = start + len(example.input_ids)
                out["input_ids"][r, start:end] = example.input_ids
                out["labels"][r, start:end] = example.labels
                out["attention_mask"][r, start:end] = 1
                out["positions"][r, start:end] = np.arange(end - start)
                out["segment_ids"][r, start:end] = segment
                if self.packing:
                    out["labels"][r, start] = IGNORE
                start = end
        return out

    @staticmethod
    def loss_tokens(batch: dict[str, np.ndarray]) -> int:
        """Positions t >= 1 with a label: the tokens a shifted loss averages over."""
        return int(np.count_nonzero(batch["labels"][:, 1:] != IGNORE))

    def _permutation(self, stream: int, n: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n)
        if self._order[0] != (stream, n):  # every step of an epoch uses its order
            self._order = ((stream, n), np.random.default_rng([self.seed, stream]).permutation(n))
        return self._order[1]


def example_lengths(examples: Sequence[Example]) -> np.ndarray:
    """Every example's token count: read from an `ExampleList` without building examples."""
    if isinstance(examples, ExampleList):
        return examples.lengths
    return np.fromiter((len(e.input_ids) for e in examples), np.int64, len(examples))


def _pack(lengths: list[int], seq_len: int, order: np.ndarray) -> list[list[int]]:
    """Next-fit packing of examples `order` (with `lengths`) into rows of seq_len tokens."""
    rows: list[list[int]] = []
    used = seq_len
    for i, length in zip(order.tolist(), lengths, strict=True):
        if used + length > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += length
    return rows
