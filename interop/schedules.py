"""Learning-rate schedules: the one definition both backends apply.

`learning_rate(step, peak, cfg, total_steps)` is the rate used by optimizer update number
`step` (0-based). On the PyTorch side that is `optimizer.param_groups[0]["lr"]` just before
the (step+1)-th `optimizer.step()`, with the scheduler stepped after every update; the JAX
trainer calls this function directly, so the two cannot drift apart.

Two families, two step-counting conventions:

- `linear`, `cosine`, `constant`, `constant_with_warmup` are `transformers.get_scheduler`'s.
  They are `LambdaLR`s, whose constructor already evaluates the factor at step 0, so update
  `k` uses `peak * factor(k)`. Warmup rises linearly from 0 (update 0 has lr 0 when there is
  warmup) and decay reaches 0 at `total_steps`.
- `warmup_lr`, `warmup_decay_lr`, `warmup_cosine_lr` are DeepSpeed's `WarmupLR`,
  `WarmupDecayLR` and `WarmupCosineLR`. They count `last_batch_iteration` from -1: the
  constructor sets the rate for iteration -1 (`warmup_min_lr` for the first two, 0 for the
  cosine one, which ignores `warmup_min_ratio` there), and each `scheduler.step()` after an
  update advances it by one. So update 0 uses iteration -1 and update `k >= 1` uses
  iteration `k - 1`; with log warmup iteration 0 is still the minimum, so the first two
  updates both run at the floor. DeepSpeed also raises warmup lengths below 2 to 2 (it
  rejects 0 outright), which we copy.

Everything is plain float64 Python arithmetic in the originals' operation order, so the
values match torch's bit for bit, not just within a tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from interop.config import ScheduleConfig

_Factor = Callable[[int, ScheduleConfig, int], float]


def _warmup_fraction(step: int, warmup: int) -> float:
    return float(step) / float(max(1, warmup))


def _hf_linear(step: int, cfg: ScheduleConfig, total: int) -> float:
    if step < cfg.warmup_steps:
        return _warmup_fraction(step, cfg.warmup_steps)
    return max(0.0, float(total - step) / float(max(1, total - cfg.warmup_steps)))


def _hf_cosine(step: int, cfg: ScheduleConfig, total: int) -> float:
    if step < cfg.warmup_steps:
        return _warmup_fraction(step, cfg.warmup_steps)
    progress = float(step - cfg.warmup_steps) / float(max(1, total - cfg.warmup_steps))
    # transformers' default num_cycles = 0.5: one half cosine wave from 1 down to 0.
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def _hf_constant(step: int, cfg: ScheduleConfig, total: int) -> float:
    return 1.0


def _hf_constant_with_warmup(step: int, cfg: ScheduleConfig, total: int) -> float:
    if step < cfg.warmup_steps:
        return float(step) / float(max(1.0, cfg.warmup_steps))
    return 1.0


_HF_FACTORS: dict[str, _Factor] = {
    "linear": _hf_linear,
    "cosine": _hf_cosine,
    "constant": _hf_constant,
    "constant_with_warmup": _hf_constant_with_warmup,
}


def _ds_warmup_gamma(iteration: int, cfg: ScheduleConfig, warmup: int) -> float:
    """DeepSpeed's warmup factor in [0, 1) for an iteration inside the warmup window."""
    if cfg.warmup_type == "log":
        return 1.0 / math.log(warmup) * math.log(iteration + 1)
    return iteration / warmup


def _ds_warmup_lr(iteration: int, peak: float, cfg: ScheduleConfig, total: int) -> float:
    """WarmupLR (`total` unused) and WarmupDecayLR at a `last_batch_iteration` >= 0."""
    warmup = max(2, cfg.warmup_steps)
    if iteration < warmup:
        gamma = _ds_warmup_gamma(iteration, cfg, warmup)
    elif cfg.type == "warmup_lr":
        gamma = 1.0
    else:
        gamma = max(0.0, float(total - iteration) / float(max(1.0, total - warmup)))
    return cfg.warmup_min_lr + (peak - cfg.warmup_min_lr) * gamma


def _ds_warmup_cosine_lr(iteration: int, peak: float, cfg: ScheduleConfig, total: int) -> float:
    """WarmupCosineLR at a `last_batch_iteration` >= 0: `peak` times a ratio."""
    warmup = max(2, cfg.warmup_steps)
    if iteration < warmup:
        ratio = _ds_warmup_gamma(iteration, cfg, warmup)
        ratio = cfg.warmup_min_ratio + ratio * (1.0 - cfg.warmup_min_ratio)
    else:
        progress = min(1.0, (iteration - warmup + 1) / max(1, total - warmup))
        ratio = (1 + math.cos(math.pi * progress)) / 2
        ratio = max(0.0, cfg.cos_min_ratio + (1.0 - cfg.cos_min_ratio) * ratio)
    return peak * ratio


def learning_rate(step: int, peak: float, cfg: ScheduleConfig, total_steps: int) -> float:
    """The learning rate of optimizer update `step` (0-based) in a run of `total_steps` updates.

    `peak` is `optim.learning_rate`; DeepSpeed schedules end at `cfg.total_steps` when set.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if cfg.type in _HF_FACTORS:
        return peak * _HF_FACTORS[cfg.type](step, cfg, total_steps)
    total = cfg.total_steps if cfg.total_steps is not None else total_steps
    iteration = step - 1  # DeepSpeed's last_batch_iteration when update `step` runs
    if cfg.type == "warmup_cosine_lr":
        return 0.0 if iteration < 0 else _ds_warmup_cosine_lr(iteration, peak, cfg, total)
    if iteration < 0:
        return cfg.warmup_min_lr
    return _ds_warmup_lr(iteration, peak, cfg, total)


def learning_rates(peak: float, cfg: ScheduleConfig, total_steps: int) -> np.ndarray:
    """The float64 learning rates of every update of a `total_steps`-update run."""
    return np.array(
        [learning_rate(step, peak, cfg, total_steps) for step in range(total_steps)],
        dtype=np.float64,
    )
