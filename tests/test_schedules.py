"""`interop.schedules` against the PyTorch originals, whole runs at a time.

The reference is what a PyTorch loop really applies: `param_groups[0]["lr"]` read before
each `optimizer.step(); scheduler.step()`, with transformers' `get_scheduler` and with
DeepSpeed's scheduler classes built on a torch AdamW.
"""

import numpy as np
import pytest
import torch
from deepspeed.runtime.lr_schedules import WarmupCosineLR, WarmupDecayLR, WarmupLR
from transformers import get_scheduler

from interop.config import ScheduleConfig
from interop.schedules import learning_rate, learning_rates

HF_TYPES = ["linear", "cosine", "constant", "constant_with_warmup"]
DS_TYPES = ["warmup_lr", "warmup_decay_lr", "warmup_cosine_lr"]
# (warmup, run length) pairs: no warmup, short, long, warmup longer than the run, tiny runs.
COMBOS = [(0, 20), (3, 20), (10, 37), (25, 12), (1, 5), (2, 2), (0, 1), (7, 200)]
PEAKS = [1e-3, 1.0]


def _optimizer(peak: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=peak)


def _torch_lrs(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> np.ndarray:
    """The lr of each update of a PyTorch loop (no gradients: step() skips the math)."""
    lrs = []
    for _ in range(steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


def _deepspeed_scheduler(optimizer, cfg: ScheduleConfig, peak: float, total: int):
    warmup = max(1, cfg.warmup_steps)  # DeepSpeed rejects 0; both sides then clamp to 2
    if cfg.type == "warmup_lr":
        return WarmupLR(optimizer, cfg.warmup_min_lr, peak, warmup, cfg.warmup_type)
    if cfg.type == "warmup_decay_lr":
        return WarmupDecayLR(optimizer, total, cfg.warmup_min_lr, peak, warmup, cfg.warmup_type)
    return WarmupCosineLR(
        optimizer, total, cfg.warmup_min_ratio, warmup, cfg.cos_min_ratio, cfg.warmup_type
    )


@pytest.mark.parametrize("peak", PEAKS)
@pytest.mark.parametrize(("warmup", "total"), COMBOS)
@pytest.mark.parametrize("kind", HF_TYPES)
def test_transformers_schedules_match(kind: str, warmup: int, total: int, peak: float) -> None:
    cfg = ScheduleConfig(type=kind, warmup_steps=warmup)
    optimizer = _optimizer(peak)
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    expected = _torch_lrs(optimizer, scheduler, total)
    ours = learning_rates(peak, cfg, total)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7 * peak)
    np.testing.assert_array_equal(ours, expected)  # same arithmetic, so bit-exact


DS_VARIANTS = [
    {},
    {"warmup_type": "linear"},
    {"warmup_min_lr": 1e-5, "warmup_min_ratio": 0.1, "cos_min_ratio": 0.05},
    {"warmup_type": "linear", "warmup_min_lr": 2e-4, "warmup_min_ratio": 0.3},
]


@pytest.mark.parametrize("peak", PEAKS)
@pytest.mark.parametrize("variant", DS_VARIANTS)
@pytest.mark.parametrize(("warmup", "total"), COMBOS)
@pytest.mark.parametrize("kind", DS_TYPES)
def test_deepspeed_schedules_match(
    kind: str, warmup: int, total: int, variant: dict, peak: float
) -> None:
    cfg = ScheduleConfig(type=kind, warmup_steps=max(1, warmup), **variant)
    optimizer = _optimizer(peak)
    scheduler = _deepspeed_scheduler(optimizer, cfg, peak, total)
    expected = _torch_lrs(optimizer, scheduler, total)
    ours = learning_rates(peak, cfg, total)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7 * peak)
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("kind", ["warmup_decay_lr", "warmup_cosine_lr"])
def test_deepspeed_total_steps_overrides_run_length(kind: str) -> None:
    """`schedule.total_steps` ends the decay, whatever the run's length (here: longer)."""
    cfg = ScheduleConfig(type=kind, warmup_steps=4, total_steps=10)
    optimizer = _optimizer(1.0)
    expected = _torch_lrs(optimizer, _deepspeed_scheduler(optimizer, cfg, 1.0, 10), 30)
    np.testing.assert_array_equal(learning_rates(1.0, cfg, 30), expected)


def test_deepspeed_step_conventions() -> None:
    """Iteration -1 at update 0: WarmupLR starts at its floor twice, WarmupCosineLR at 0."""
    decay = ScheduleConfig(type="warmup_decay_lr", warmup_steps=10, warmup_min_lr=0.1)
    assert learning_rate(0, 1.0, decay, 100) == 0.1
    assert learning_rate(1, 1.0, decay, 100) == 0.1  # log warmup: log(0 + 1) = 0
    assert learning_rate(2, 1.0, decay, 100) > 0.1
    cosine = ScheduleConfig(type="warmup_cosine_lr", warmup_steps=10, warmup_min_ratio=0.5)
    assert learning_rate(0, 1.0, cosine, 100) == 0.0
    assert learning_rate(1, 1.0, cosine, 100) == 0.5


def test_transformers_step_conventions() -> None:
    """LambdaLR evaluates step 0 at construction: update k uses factor(k)."""
    cfg = ScheduleConfig(type="linear", warmup_steps=4)
    assert learning_rates(2.0, cfg, 8).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 1.5, 1.0, 0.5]


def test_whole_run_shape_and_negative_step() -> None:
    cfg = ScheduleConfig()
    rates = learning_rates(1e-3, cfg, 5)
    assert rates.dtype == np.float64 and rates.shape == (5,)
    assert learning_rates(1e-3, cfg, 0).shape == (0,)
    with pytest.raises(ValueError, match="step must be >= 0"):
        learning_rate(-1, 1e-3, cfg, 5)
