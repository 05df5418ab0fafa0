"""The training loop both backends run: when to log, save and evaluate, and when to stop.

A trainer (the JAX `Engine`, the PyTorch `Trainer`) offers one optimizer step at a time
(`train_step`), an evaluation, and checkpoints; `fit` decides the rest, once for both,
so both write the same `metrics.jsonl` rows at the same steps. Step metrics stay where
the trainer made them (on the device, for JAX) until the logging interval, when
`host_metrics` brings the pending ones over in one transfer: nothing per step forces a
host sync. A checkpoint or an epoch boundary also flushes.

Which checkpoint is good. The loss logged for step N is that of the weights before
update N, so checkpoint N (the weights after it) is vouched for only by the loss of step
N + 1. When step N + 1's loss is NaN or infinite, or the run has died (the loss flat at
ln V, the uniform guess, with a zero gradient for `DEAD_STEPS` steps), every checkpoint
from N on is removed and the message names the newest that remains: it truly resumes
(with a lower learning rate, say). Trainers keep one checkpoint more than
`train.keep_checkpoints` so that the newest, not yet vouched for, never pushes out the
last one that is.

Ctrl-C asks the loop to stop after the step under way, so that it never lands inside a
checkpoint write or a collective (a second Ctrl-C stops at once); the message names the
step reached and the checkpoint that resumes.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np

from interop.config import RunConfig
from interop.errors import Interrupted, UserError
from interop.metrics_log import MetricsLog

DEAD_STEPS = 5


class Trainer(Protocol):
    cfg: RunConfig
    out: Path
    global_steps: int  # optimizer steps done
    total_steps: int
    steps_per_epoch: int
    vocab_size: int  # rows of the output layer
    is_main: bool

    def train_step(self) -> dict: ...  # one optimizer step on the run's next batch

    def host_metrics(self, metrics: list[dict]) -> list[dict]: ...

    def evaluate(self) -> dict[str, float]: ...

    def save_checkpoint(self) -> object: ...  # of the current step

    def restore_latest(self) -> int | None: ...  # the step restored, None without one

    # where restore_latest found it: OUT/checkpoints, or another run's (`train.resume_from`)
    resumed_from: Path | None

    def drop_checkpoints_from(self, step: int) -> int | None: ...  # the newest left

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
    (steps, first and last evaluation, the last logged step's metrics, steps that had no
    scored token)."""
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
        self.flat: list[int] = []  # consecutive steps that looked dead
        self.empty_steps = 0
        self.checkpoint: int | None = None  # the newest checkpoint of this run

    def run(self) -> dict:
        t = self.t
        try:
            with _stop_after_step() as stop:
                first_eval, last_eval = self.train(stop)
        except KeyboardInterrupt:
            resumes = (
                f"checkpoint step {self.checkpoint} in {t.out / 'checkpoints'} resumes it"
                if self.checkpoint is not None
                else "no checkpoint was saved"
            )
            raise Interrupted(f"interrupted at step {t.global_steps}; {resumes}") from None
        finally:
            t.close()
            self.log.close()
        return {
            "steps": t.global_steps,
            "first_eval": first_eval,
            "last_eval": last_eval,
            "steps_without_tokens": self.empty_steps,
            **self.last_logged,
        }

    def train(self, stop: threading.Event) -> tuple[dict, dict]:
        """Resume or start, then step to the end; the first and the last evaluation."""
        t, tc = self.t, self.t.cfg.train
        resumed = t.restore_latest()
        own = resumed is not None and t.resumed_from == t.out / "checkpoints"
        self.checkpoint = resumed if own else None
        if resumed is not None and t.is_main:
            print(f"note: resuming from step {resumed} ({t.resumed_from})", file=sys.stderr)
        self.log.truncate_after(resumed if resumed is not None else -1)
        first_eval = self.report_eval() if resumed is None else {}
        last_eval, pending = first_eval, []
        started, start_step = time.monotonic(), t.global_steps
        self.last_flush = started
        every = 1 if t.cfg.logging.print_loss else tc.log_every
        while t.global_steps < t.total_steps:
            if stop.is_set():
                raise KeyboardInterrupt
            pending.append((t.global_steps + 1, t.train_step()))
            done = t.global_steps
            boundary = done % t.steps_per_epoch == 0
            final = done == t.total_steps
            save = bool(tc.save_every and done % tc.save_every == 0) or final
            if done % every == 0 or save or boundary:
                self.flush(pending)
                pending = []
                last = self.last_logged
                self.log.show(
                    done, t.total_steps, last["loss"], last["tokens_per_s"], started, start_step
                )
            if save:
                t.save_checkpoint()
                self.checkpoint = done
            if (tc.eval_every and done % tc.eval_every == 0) or boundary or final:
                last_eval = self.report_eval()
        return first_eval, last_eval

    def report_eval(self) -> dict:
        result = self.t.evaluate()
        if result:
            self.log.write({"step": self.t.global_steps, **result})
            if self.t.is_main:
                self.printer(result)
        return result

    def flush(self, pending: list[tuple[int, dict]]) -> None:
        """Bring the pending step metrics to the host, log them, stop a bad run."""
        host = self.t.host_metrics([m for _, m in pending])
        now = time.monotonic()
        rate = sum(int(m["tokens"]) for m in host) / max(now - self.last_flush, 1e-9)
        self.last_flush = now
        for (step, _), m in zip(pending, host, strict=True):
            entry = {
                "step": step,
                "loss": float(m["loss"]),
                "lr": float(m["lr"]),
                "grad_norm": float(m["grad_norm"]),
                "tokens": int(m["tokens"]),
                "tokens_per_s": rate,
            }
            if "distill" in m:
                entry["distill"] = float(m["distill"])
            self.check(entry)
            self.log.write(entry)
            self.last_logged = entry
            if self.t.cfg.logging.print_loss and self.t.is_main:
                epoch = (step - 1) // self.t.steps_per_epoch
                print(f"Epoch: {epoch}, Step: {step}, Rank: 0, loss = {entry['loss']}", flush=True)

    def check(self, entry: dict) -> None:
        """Stop on a NaN/Inf loss or a dead run, keeping only checkpoints that resume."""
        step, loss = entry["step"], entry["loss"]
        self.empty_steps += entry["tokens"] == 0
        if not math.isfinite(loss):
            self.stop(f"training diverged: loss is {loss} at step {step}", step - 1)
        uniform = math.log(self.t.vocab_size)
        dead = entry["grad_norm"] == 0 and abs(loss - uniform) <= 1e-3 * uniform
        self.flat = [*self.flat, step] if dead else []
        if len(self.flat) == DEAD_STEPS:
            self.stop(
                f"training died: from step {self.flat[0]} the loss stayed at ln V = "
                f"{uniform:.4f} with a zero gradient (the learning rate is probably too high)",
                self.flat[0] - 1,
            )

    def stop(self, what: str, bad_from: int) -> None:
        """Remove the checkpoints from step `bad_from` on; stop, naming the one left."""
        good = self.t.drop_checkpoints_from(bad_from)
        where = (
            f"the last good checkpoint is step {good} in {self.t.out / 'checkpoints'}"
            if good is not None
            else "no good checkpoint was saved"
        )
        raise UserError(f"{what}; {where}")


@contextmanager
def _stop_after_step() -> Iterator[threading.Event]:
    """While the block runs, the first Ctrl-C only sets the event the loop checks between
    steps; a second one interrupts at once. Outside the main thread, Ctrl-C is left as is."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
