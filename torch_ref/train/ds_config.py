"""The DeepSpeed config of a run, generated from its `RunConfig`.

A user's own ds.json is read by `interop.frontends.deepspeed_json` onto the RunConfig
first (as `jax-sft train --deepspeed_config` does), and this config is generated from
the result, so both backends read a ds.json the same way. The optimizer and scheduler are
not in it: they are client objects (`optimizer`), which DeepSpeed steps.
"""

from __future__ import annotations

from interop.config import RunConfig

NEVER = 2**31 - 1


def ds_config(cfg: RunConfig, dp: int, *, persistent_numel: int = 0) -> dict:
    """`persistent_numel`: under ZeRO-3, keep parameters of up to this many elements whole
    on every rank (the sparse penalty reads the delta values outside a module forward)."""
    t = cfg.train
    zero: dict = {"stage": cfg.parallel.zero_stage}
    if persistent_numel and cfg.parallel.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = persistent_numel + 1
    clip = cfg.optim.grad_clip
    return {
        "train_batch_size": t.micro_batch_size * t.gradient_accumulation_steps * dp,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "gradient_clipping": clip if clip is not None else 0.0,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
    }
