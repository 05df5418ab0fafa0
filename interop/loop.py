"""The training loop both backends run: when to log, save and evaluate, and the NaN stop.

A trainer (the JAX `Engine`, the PyTorch `Trainer`) offers one optimizer step at a time
(`train_step`), an evaluation, and checkpoints; `fit` decides the rest, once for both,
so both write the same `metrics.jsonl` rows at the same steps. Step metrics stay where
the trainer made them (on the device, for JAX) until the logging interval, when
`host_metrics` brings the pending ones over in one transfer: nothing per step forces a
host sync. A checkpoint or an epoch boundary also flushes, so a saved state is never
one whose loss was not looked at.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from interop.config import RunConfig
from interop.errors import UserError
from interop.metrics_log import MetricsLog


class Trainer(Protocol):
    cfg: RunConfig
    out: Path
    global_steps: int  # optimizer steps done
    total_steps: int
    steps_per_epoch: int
    is_main: bool

    def train_step(self) -> dict: ...  # one optimizer step on the run's next batch

    def host_metrics(self, metrics: list[dict]) -> list[dict]: ...

    def evaluate(self) -> dict[str, float]: ...

    def save_checkpoint(self) -> object: ...  # of the current step

    def restore_latest(self) -> int | None: ...  # the step restored, None without one

    def close(self) -> None: ...


def eval_result(sums: Sequence[float], counts: Sequence[float], style: str) -> dict[str, float]:
    """Eval loss and perplexity from per-batch (sum of token losses, scored tokens).

    Default: averaged over all scored tokens. DeepSpeed-Chat style: the mean of the
    per-batch mean losses, as its `evaluation()` computes it.
    """
    sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
    if style == "dschat":
        loss = float(np.mean(sums / np.maximum(counts, 1)))
    else:
        loss = float(sums.sum() / max(counts.sum(), 1))
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 700.0))}


def fit(trainer: Trainer, printer: Callable[[dict], None] | None = None) -> dict:
    """Train to the end, resuming from the latest checkpoint if there is one; the summary
    (steps, first and last evaluation, the last logged step's metrics)."""
    return _Loop(trainer, printer or (lambda result: None)).run()


class _Loop:
    def __init__(self, trainer: Trainer, printer: Callable[[dict], None]):
        self.t, self.printer = trainer, printer
        lg = trainer.cfg.logging
        tb = Path(lg.tensorboard_dir or trainer.out / "tensorboard") if lg.tensorboard else None
        self.log = MetricsLog(
            trainer.out / "metrics.jsonl",
            tensorboard_dir=tb,
            progress=lg.progress_bar,
            enabled=trainer.is_main,
        )
        self.last_logged: dict = {}

    def run(self) -> dict:
        t, tc = self.t, self.t.cfg.train
        try:
            resumed = t.restore_latest()
            self.log.truncate_after(resumed or 0)
            first_eval = self.report_eval() if resumed is None else {}
            last_eval, pending, last_good = first_eval, [], resumed
            started, start_step = time.monotonic(), t.global_steps
            self.last_flush = started
            every = 1 if t.cfg.logging.print_loss else tc.log_every
            while t.global_steps < t.total_steps:
                pending.append((t.global_steps + 1, t.train_step()))
                done = t.global_steps
                boundary = done % t.steps_per_epoch == 0
                final = done == t.total_steps
                save = bool(tc.save_every and done % tc.save_every == 0) or final
                if done % every == 0 or save or boundary:
                    self.flush(pending, last_good)
                    pending = []
                    last = self.last_logged
                    self.log.show(
                        done, t.total_steps, last["loss"], last["tokens_per_s"], started, start_step
                    )
                if save:
                    t.save_checkpoint()
                    last_good = done
                if (tc.eval_every and done % tc.eval_every == 0) or boundary or final:
                    last_eval = self.report_eval()
        finally:
            t.close()
            self.log.close()
        return {
            "steps": t.global_steps,
            "first_eval": first_eval,
            "last_eval": last_eval,
            **self.last_logged,
        }

    def report_eval(self) -> dict:
        result = self.t.evaluate()
        if result:
            self.log.write({"step": self.t.global_steps, **result})
            if self.t.is_main:
                self.printer(result)
        return result

    def flush(self, pending: list[tuple[int, dict]], last_good: int | None) -> None:
        """Bring the pending step metrics to the host, log them, stop on a NaN loss."""
        host = self.t.host_metrics([m for _, m in pending])
        now = time.monotonic()
        rate = sum(int(m["tokens"]) for m in host) / max(now - self.last_flush, 1e-9)
        self.last_flush = now
        for (step, _), m in zip(pending, host, strict=True):
            loss = float(m["loss"])
            if not math.isfinite(loss):
                where = (
                    f"the last good checkpoint is step {last_good} in {self.t.out / 'checkpoints'}"
                    if last_good
                    else "no checkpoint was saved"
                )
                raise UserError(f"training diverged: loss is {loss} at step {step}; {where}")
            entry = {
                "step": step,
                "loss": loss,
                "lr": float(m["lr"]),
                "grad_norm": float(m["grad_norm"]),
                "tokens": int(m["tokens"]),
                "tokens_per_s": rate,
            }
            self.log.write(entry)
            self.last_logged = entry
            if self.t.cfg.logging.print_loss and self.t.is_main:
                epoch = (step - 1) // self.t.steps_per_epoch
                print(f"Epoch: {epoch}, Step: {step}, Rank: 0, loss = {loss}", flush=True)
