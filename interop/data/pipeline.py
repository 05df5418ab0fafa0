"""The data config turned into train and eval examples.

Per source, in config order: read and validate its rows, keep the phase's
`data_split` share (as DeepSpeed-Chat does, per dataset; unless `split: false`), hold out a seeded
`eval_fraction` when no eval sources are given, then apply the source's weight.
Several sources are concatenated and reordered by DeepSpeed-Chat's blend shuffle
(`get_shuffle_idx(seed, total)`). Eval sources go through the same split, unweighted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from interop.config import DataConfig, DataSource
from interop.data.examples import Example, make_examples
from interop.data.sources import Row, read_source, records_rows, weighted
from interop.data.split import phase_indices, shuffle_index
from interop.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EVAL_STREAM, WEIGHT_STREAM = 0, 1  # RNG streams per source, beside data.seed


def build_datasets(
    cfg: DataConfig,
    tok: PreTrainedTokenizerFast,
    eot: str,
    *,
    base_dir: Path = Path("."),
    records: list | None = None,
) -> tuple[list[Example], list[Example]]:
    """(train, eval) examples for `cfg`; relative source paths resolve against base_dir.
    `records` (example dicts given in memory) are one more source, after the files."""
    sources = [(s, read_source(s, base_dir)) for s in cfg.sources]
    if records is not None:
        sources.append((DataSource(path="training_data"), records_rows(records)))
    if not sources:
        raise UserError("data.sources: no training data given")
    hold_out = cfg.eval_fraction if not cfg.eval_sources else 0.0
    train: list[Row] = []
    held: list[Row] = []
    counts = {"read": 0, "split": 0, "kept": 0}
    for index, (source, rows) in enumerate(sources):
        counts["read"] += len(rows)
        rows = _phase_rows(rows, cfg, source)
        counts["split"] += len(rows)
        rows, out = _hold_out(rows, hold_out, _rng(cfg.seed, index, EVAL_STREAM))
        held += out
        counts["kept"] += len(rows)
        train += weighted(rows, source.weight, _rng(cfg.seed, index, WEIGHT_STREAM))
    train = _blend(train, len(sources), cfg.seed)
    if cfg.eval_sources:
        rows = [r for s in cfg.eval_sources for r in _phase_rows(read_source(s, base_dir), cfg, s)]
        held = _blend(rows, len(cfg.eval_sources), cfg.seed)
    make = dict(max_seq_len=cfg.max_seq_len, loss_on=cfg.loss_on)
    train_examples = make_examples(train, tok, eot, **make)
    if not train_examples:
        names = _names([s for s, _ in sources])
        raise UserError(f"data.sources ({names}): {_empty_reason(cfg, counts)}")
    return train_examples, make_examples(held, tok, eot, **make)


def _phase_rows(rows: list[Row], cfg: DataConfig, source: DataSource) -> list[Row]:
    if not source.split:
        return rows
    return [rows[i] for i in phase_indices(len(rows), cfg.data_split, cfg.phase, cfg.seed)]


def _hold_out(
    rows: list[Row], fraction: float, rng: np.random.Generator
) -> tuple[list[Row], list[Row]]:
    """(kept, held out): a seeded round(fraction * n) of the rows go to eval."""
    chosen = set(rng.permutation(len(rows))[: round(fraction * len(rows))].tolist())
    kept = [row for i, row in enumerate(rows) if i not in chosen]
    return kept, [row for i, row in enumerate(rows) if i in chosen]


def _blend(rows: list[Row], sources: int, seed: int) -> list[Row]:
    """DeepSpeed-Chat reorders a concatenation of several datasets; one stays as it is."""
    if sources < 2:
        return rows
    return [rows[i] for i in shuffle_index(len(rows), seed).tolist()]


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def _names(sources: list[DataSource]) -> str:
    return ", ".join(source.path for source in sources)


def _empty_reason(cfg: DataConfig, counts: dict[str, int]) -> str:
    if counts["read"] == 0:
        return "no rows"
    if counts["split"] == 0:
        return f"no examples left after data_split {cfg.data_split} phase {cfg.phase}"
    if counts["kept"] == 0:
        return f"no examples left after holding out eval_fraction {cfg.eval_fraction}"
    return "no examples: every row has a null prompt or chosen"
