"""Tokenized rows as flat arrays, and a run's examples as indices into them.

A source's rows, tokenized, are three arrays (`TokenTable`): every row's token ids end
to end (`ids`, int32), where each row starts (`starts`, int64, one more than the rows),
and how many leading tokens are prompt (`prompt_lens`, int32; `SKIPPED` for a row
DeepSpeed-Chat drops). Loss labels are not stored: they are the ids with the first
`prompt_lens` set to -100. From the cache the arrays are memory-mapped, so a table of a
million rows costs address space, not memory, until a batch reads its rows.

A run's examples (`ExampleList`) are (table, row) pairs in the run's order: what the
split, hold-out, weights and blend chose. It is a sequence of `Example`s built on demand,
so `Batches` reads one batch's rows and nothing else.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interop.data.examples import IGNORE, SKIPPED, Example


@dataclass(frozen=True)
class TokenTable:
    """The tokenized rows of one source, in the source's order."""

    ids: np.ndarray
    starts: np.ndarray
    prompt_lens: np.ndarray

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> TokenTable:
        """A table held in memory, from per-row token lists."""
        lengths = np.fromiter((len(row) for row in ids), np.int64, len(ids))
        starts = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(starts[-1]))
        return cls(flat, starts, np.asarray(prompt_lens, np.int32).reshape(-1))

    @property
    def rows(self) -> int:
        return len(self.prompt_lens)


class ExampleList(Sequence):
    """Examples `rows[i]` of `tables[which[i]]`, in order; rows a table marks skipped are
    dropped when the list is made."""

    def __init__(self, tables: Sequence[TokenTable], which: np.ndarray, rows: np.ndarray):
        which, rows = np.asarray(which, np.int32), np.asarray(rows, np.int64)
        prompt = np.zeros(len(rows), np.int32)
        lengths = np.zeros(len(rows), np.int64)
        for t, table in enumerate(tables):
            here = which == t
            prompt[here] = table.prompt_lens[rows[here]]
            lengths[here] = np.diff(table.starts)[rows[here]]
        keep = prompt != SKIPPED
        self.tables = list(tables)
        self.which, self.rows = which[keep], rows[keep]
        self.lengths, self.prompt_lens = lengths[keep], prompt[keep]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int | slice) -> Example | ExampleList:  # type: ignore[override]
        if isinstance(i, slice):
            part = ExampleList.__new__(ExampleList)
            part.tables = self.tables
            part.which, part.rows = self.which[i], self.rows[i]
            part.lengths, part.prompt_lens = self.lengths[i], self.prompt_lens[i]
            return part
        table = self.tables[self.which[i]]
        row = self.rows[i]
        ids = np.array(table.ids[table.starts[row] : table.starts[row + 1]], np.int32)
        labels = ids.copy()
        labels[: self.prompt_lens[i]] = IGNORE
        return Example(ids, labels)

    def scored_tokens(self) -> int:
        """Tokens a shifted loss would score: positions t >= 1 past the prompt."""
        return int(np.sum(np.maximum(self.lengths - np.maximum(self.prompt_lens, 1), 0)))
