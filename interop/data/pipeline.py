"""The data config turned into train and eval examples.

Per source, in config order: tokenize its files (through the `token_cache` when the run
has a cache directory), keep the phase's `data_split` share (as DeepSpeed-Chat does, per
dataset; unless `split: false`), hold out a seeded `eval_fraction` when no eval sources
are given, then apply the source's weight. Several sources are concatenated and
reordered by DeepSpeed-Chat's blend shuffle (`get_shuffle_idx(seed, total)`). Eval
sources go through the same split, unweighted. Rows that make no example (a null prompt
or chosen) are dropped last, as DeepSpeed-Chat drops them after splitting.

Everything after tokenization picks rows by index: (table, row) pairs, never the rows'
text, so a million-row set costs a few arrays of integers beside its mapped tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from interop.config import DataConfig, DataSource
from interop.data.examples import tokenize_rows
from interop.data.sources import file_rows, records_rows, source_files, weighted
from interop.data.split import phase_indices, shuffle_index
from interop.data.token_cache import cached_table
from interop.data.token_table import ExampleList, TokenTable
from interop.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EVAL_STREAM, WEIGHT_STREAM = 0, 1  # RNG streams per source, beside data.seed

Picks = tuple[np.ndarray, np.ndarray]  # (table, row) of each chosen row, in order


def build_datasets(
    cfg: DataConfig,
    tok: PreTrainedTokenizerFast,
    eot: str,
    *,
    base_dir: Path = Path("."),
    records: list | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> tuple[ExampleList, ExampleList]:
    """(train, eval) examples for `cfg`; relative source paths resolve against base_dir.
    `records` (example dicts given in memory) are one more source, after the files.
    With `cache_dir`, each file is tokenized once into `token_cache` and mapped after."""
    tables: list[TokenTable] = []
    make = dict(max_seq_len=cfg.max_seq_len, loss_on=cfg.loss_on)

    def tokenized(source: DataSource) -> Picks:
        """Every row of a source as (table, row) picks, its files tokenized."""
        picks = []
        for full, shown in source_files(source, base_dir):
            if cache_dir is None:
                rows = file_rows(full, shown, source.format)
                table = TokenTable.from_lists(
                    *_joined([tokenize_rows(r, tok, eot, **make) for r in rows])
                )
            else:
                table = cached_table(
                    full,
                    shown,
                    source.format,
                    tok,
                    eot,
                    cache_dir=cache_dir,
                    progress=progress,
                    **make,
                )
            picks.append(_all_rows(len(tables), table.rows))
            tables.append(table)
        return _concat(picks)

    sources = [(s, tokenized(s)) for s in cfg.sources]
    if records is not None:
        rows = records_rows(records)
        tables.append(TokenTable.from_lists(*tokenize_rows(rows, tok, eot, **make)))
        sources.append((DataSource(path="training_data"), _all_rows(len(tables) - 1, len(rows))))
    if not sources:
        raise UserError("data.sources: no training data given")
    hold_out = cfg.eval_fraction if not cfg.eval_sources else 0.0
    train: list[Picks] = []
    held: list[Picks] = []
    counts = {"read": 0, "split": 0, "kept": 0}
    for index, (source, picks) in enumerate(sources):
        counts["read"] += len(picks[0])
        picks = _phase(picks, cfg, source)
        counts["split"] += len(picks[0])
        picks, out = _hold_out(picks, hold_out, _rng(cfg.seed, index, EVAL_STREAM))
        held.append(out)
        counts["kept"] += len(picks[0])
        repeats = weighted(len(picks[0]), source.weight, _rng(cfg.seed, index, WEIGHT_STREAM))
        train.append(_take(picks, repeats))
    train_picks = _blend(_concat(train), len(sources), cfg.seed)
    if cfg.eval_sources:
        picks = _concat([_phase(tokenized(s), cfg, s) for s in cfg.eval_sources])
        held = [_blend(picks, len(cfg.eval_sources), cfg.seed)]
    train_examples = ExampleList(tables, *train_picks)
    if not len(train_examples):
        names = _names([s for s, _ in sources])
        raise UserError(f"data.sources ({names}): {_empty_reason(cfg, counts)}")
    return train_examples, ExampleList(tables, *_concat(held))


def _joined(chunks: list[tuple[list, list]]) -> tuple[list, list]:
    return [i for ids, _ in chunks for i in ids], [p for _, lens in chunks for p in lens]


def _all_rows(table: int, rows: int) -> Picks:
    return np.full(rows, table, np.int32), np.arange(rows, dtype=np.int64)


def _concat(picks: list[Picks]) -> Picks:
    if not picks:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate([p[0] for p in picks]), np.concatenate([p[1] for p in picks])


def _take(picks: Picks, positions: np.ndarray) -> Picks:
    return picks[0][positions], picks[1][positions]


def _phase(picks: Picks, cfg: DataConfig, source: DataSource) -> Picks:
    if not source.split:
        return picks
    return _take(picks, phase_indices(len(picks[0]), cfg.data_split, cfg.phase, cfg.seed))


def _hold_out(picks: Picks, fraction: float, rng: np.random.Generator) -> tuple[Picks, Picks]:
    """(kept, held out): a seeded round(fraction * n) of the rows go to eval, both in order."""
    n = len(picks[0])
    chosen = np.zeros(n, bool)
    chosen[rng.permutation(n)[: round(fraction * n)]] = True
    return _take(picks, np.flatnonzero(~chosen)), _take(picks, np.flatnonzero(chosen))


def _blend(picks: Picks, sources: int, seed: int) -> Picks:
    """DeepSpeed-Chat reorders a concatenation of several datasets; one stays as it is."""
    if sources < 2:
        return picks
    return _take(picks, shuffle_index(len(picks[0]), seed))


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
