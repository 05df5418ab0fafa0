"""A run's examples and the batches both backends cut from them.

The optimizer step's global batch has micro x accumulation x data-parallel rows; the
DeepSpeed-style data loader yields micro-batches of micro x data-parallel rows; eval
batches have eval-micro x data-parallel rows and are not shuffled. All are `Batches` over
the same examples with the same seed, so both backends, and both ways of driving a run,
see the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from interop.config import RunConfig
from interop.data.batches import Batches
from interop.data.pipeline import build_datasets
from interop.data.token_table import ExampleList
from interop.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


@dataclass
class RunData:
    cfg: RunConfig
    train: ExampleList
    evals: ExampleList
    pad_id: int
    dp: int  # data-parallel ranks

    def batches(self, rows: int) -> Batches:
        """Shuffled train batches of `rows` rows."""
        return self._batches(self.train, rows, shuffle=True)

    def global_batches(self) -> Batches:
        """The optimizer steps' batches: micro x accumulation x data-parallel rows."""
        t = self.cfg.train
        return self.batches(t.micro_batch_size * t.gradient_accumulation_steps * self.dp)

    def total_steps(self) -> int:
        """Optimizer steps in the run: `train.max_steps`, else epochs x global batches."""
        t = self.cfg.train
        return t.max_steps or t.epochs * self.global_batches().steps_per_epoch

    def eval_batches(self) -> Batches | None:
        """Eval batches of eval-micro x data-parallel rows (None without an eval set)."""
        if not self.evals:
            return None
        t = self.cfg.train
        return self._batches(self.evals, (t.eval_batch_size or t.micro_batch_size) * self.dp, False)

    def _batches(self, examples: ExampleList, rows: int, shuffle: bool) -> Batches:
        return Batches(
            examples,
            batch_size=rows,
            seq_len=self.cfg.data.max_seq_len,
            pad_id=self.pad_id,
            packing=self.cfg.data.packing,
            seed=self.cfg.train.seed,
            shuffle=shuffle,
        )


def run_data(
    cfg: RunConfig,
    tok: PreTrainedTokenizerFast,
    eot: str,
    dp: int,
    *,
    base_dir: Path = Path("."),
    records: list | None = None,
) -> RunData:
    """The run's data from its config, plus `records` given in memory (`build_datasets`);
    data in which no token would be scored is refused, naming the cause."""
    train, evals = build_datasets(
        cfg.data,
        tok,
        eot,
        base_dir=base_dir,
        records=records,
        cache_dir=cache_dir(cfg),
        progress=cfg.logging.progress_bar,
    )
    _check_scored(train, cfg, "data.sources")
    if evals:
        _check_scored(evals, cfg, "data.eval_sources" if cfg.data.eval_sources else "eval")
    return RunData(cfg, train, evals, tok.pad_token_id, dp)


def cache_dir(cfg: RunConfig) -> Path:
    """Where the run's tokenized data is cached: `data.cache_dir`, else `.data-cache`
    beside the output directory (runs that share a parent share their tokens)."""
    if cfg.data.cache_dir is not None:
        return Path(cfg.data.cache_dir).expanduser()
    return Path(cfg.train.output_dir).expanduser().parent / ".data-cache"


def _check_scored(examples: ExampleList, cfg: RunConfig, what: str) -> None:
    if examples.scored_tokens():
        return
    d = cfg.data
    cause = (
        f"with loss_on completion, truncation to max_seq_len {d.max_seq_len} cut off every "
        "completion"
        if d.loss_on == "completion"
        else f"every example is a single token at max_seq_len {d.max_seq_len}"
    )
    raise UserError(f"{what}: no token to train or evaluate on: {cause}")
