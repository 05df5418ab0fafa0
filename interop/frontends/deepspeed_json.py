"""Read a DeepSpeed `ds_config.json` as overrides for a `RunConfig`.

`overrides_from_deepspeed(path)` returns a nested dict of RunConfig fields (to merge over a
YAML config, see `merge`) and a list of notes. What it takes from the JSON:

- `train_batch_size`, `train_micro_batch_size_per_gpu`, `gradient_accumulation_steps`
  -> `train.micro_batch_size`, `train.gradient_accumulation_steps`
- `optimizer` (`Adam`/`AdamW`: `lr`, `betas`, `eps`, `weight_decay`) -> `optim.*`
- `scheduler` (`WarmupLR`, `WarmupDecayLR`, `WarmupCosineLR`) -> `schedule.*`, with
  `warmup_max_lr` -> `optim.learning_rate`
- `gradient_clipping` (0 = off) -> `optim.grad_clip`
- `bf16` (or its old name `bfloat16`) / `fp16` `.enabled` -> `model.dtype`
- `zero_optimization.stage` -> `parallel.zero_stage`
- `tensorboard` (`enabled`, `output_path` + `job_name`) -> `logging.tensorboard`,
  `logging.tensorboard_dir`
- `compression_training` (`sparse_pruning`, `row_pruning`, `head_pruning`) ->
  `prune.rules`, as `interop.frontends.deepspeed_compression` explains

Rules, chosen so that the JSON means what it means to DeepSpeed:

- Batch sizes follow DeepSpeed's rule `train_batch_size = micro x accumulation x
  data-parallel size`: any two determine the third, one alone implies accumulation 1, and
  three that disagree are an error naming the file and the numbers.
- A section the JSON lacks leaves the YAML's (or the default) value alone. Inside a section
  it has, DeepSpeed's own defaults fill the gaps: an `optimizer` without `betas` means
  FusedAdam's (0.9, 0.999), a `WarmupDecayLR` without `warmup_max_lr` peaks at 0.001, a
  `WarmupLR` without `warmup_num_steps` warms up for 1000 steps.
- DeepSpeed's `Adam` is decoupled (AdamW) unless `adam_w_mode` is false; coupled L2 decay is
  not implemented here, so that combination with a non-zero decay is an error.
- The scheduler sets the learning rate of every step, so its peak (`warmup_max_lr`, or the
  optimizer's `lr` where the scheduler has none) becomes `optim.learning_rate`.
- `"auto"` (Hugging Face Trainer style) means "not given here": the YAML decides.
- Keys that DeepSpeed knows but that change nothing here (communication buckets, offload,
  monitors, loss-scaler details, ...) and keys DeepSpeed does not know are listed in the
  notes; nothing is dropped silently. Parameters that would change the arithmetic and
  cannot be honoured (AMSGrad, no bias correction, a second scheduler type) are errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interop.errors import UserError
from interop.frontends.deepspeed_compression import prune_rules
from interop.frontends.deepspeed_optim import optimizer, scheduler
from interop.frontends.deepspeed_translation import AUTO, Translation, extra, given, read_json

_ZERO_OPTIONS = frozenset(
    "allgather_bucket_size allgather_partitions allgather_sequential compute_grad_norm "
    "contiguous_gradients cpu_offload cpu_offload_param cpu_offload_use_pin_memory "
    "elastic_checkpoint enable_sanity_checks gather_16bit_weights_on_model_save "
    "ignore_unused_parameters leaf_module legacy_stage1 load_from_fp32_weights "
    "log_trace_cache_warnings max_live_parameters max_reuse_distance memory_efficient_linear "
    "model_persistence_threshold module_granularity_threshold offload_optimizer offload_param "
    "overlap_comm override_module_apply param_persistence_threshold parameter_alignment "
    "pipeline_loading_checkpoint prefetch_bucket_size reduce_bucket_size reduce_scatter "
    "round_robin_gradients stage3_gather_16bit_weights_on_model_save "
    "stage3_gather_fp16_weights_on_model_save stage3_max_live_parameters "
    "stage3_max_reuse_distance stage3_param_persistence_threshold stage3_prefetch_bucket_size "
    "stage3_model_persistence_threshold sub_group_size use_all_reduce_for_fetch_params "
    "use_multi_rank_bucket_allreduce zenflow zero_hpz_partition_size zero_quantized_gradients "
    "zero_quantized_nontrainable_weights zero_quantized_weights mics_shard_size "
    "mics_hierarchical_params_gather".split()
)

# Top-level DeepSpeed keys that are accepted and change nothing on this backend.
_NO_EFFECT = {
    "steps_per_print": "progress is printed every train.log_every steps",
    "wall_clock_breakdown": "DeepSpeed timers",
    "memory_breakdown": "DeepSpeed timers",
    "prescale_gradients": "gradients are averaged exactly once, in float32",
    "gradient_predivide_factor": "gradients are averaged exactly once, in float32",
    "communication_data_type": "communication is XLA's",
    "seq_parallel_communication_data_type": "communication is XLA's",
    "sparse_gradients": "gradients are dense here",
    "disable_allgather": "communication is XLA's",
    "hybrid_engine": "DeepSpeed-Chat's RLHF inference engine",
    "flops_profiler": "use `jax-sft bench`",
    "activation_checkpointing": "use model.remat",
    "csv_monitor": "metrics go to metrics.jsonl",
    "wandb": "metrics go to metrics.jsonl",
    "comet": "metrics go to metrics.jsonl",
    "zero_allow_untested_optimizer": "a DeepSpeed safety switch",
    "zero_force_ds_cpu_optimizer": "there is no offload here",
    "dump_state": "DeepSpeed debugging",
    "dataloader_drop_last": "the data pipeline keeps its own batching",
    "data_types": "gradients accumulate in float32",
    "amp": "precision comes from bf16/fp16",
    "aio": "there is no NVMe offload here",
    "checkpoint": "checkpoints are Orbax's",
    "elasticity": "the mesh is fixed at start",
    "autotuning": "DeepSpeed's autotuner",
    "torch_autocast": "precision comes from bf16/fp16",
    "compile": "the train step is always jax.jit-compiled",
}
_PRECISION_KEYS = ("bf16", "bfloat16", "fp16")
_HANDLED = {
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "optimizer",
    "scheduler",
    "gradient_clipping",
    "zero_optimization",
    "tensorboard",
    "compression_training",
    *_PRECISION_KEYS,
}


def _batch_sizes(t: Translation, data: dict) -> None:
    """DeepSpeed's batch-size rule: fill the missing one of the three, then check all three."""
    keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    batch, micro, accum = (
        t.number(key, data[key], integer=True, minimum=1) if given(data, key) else None
        for key in keys
    )
    if batch is None and micro is None:
        if accum is not None:
            t.set("train", "gradient_accumulation_steps", accum)
        return
    if batch is not None and micro is not None and accum is None:
        accum = batch // micro // t.dp
    elif batch is not None and micro is None:
        accum = accum or 1
        micro = batch // t.dp // accum
    elif batch is None:
        accum = accum or 1
        batch = micro * accum * t.dp
    if batch != micro * accum * t.dp or micro < 1 or accum < 1:
        raise UserError(
            f"{t.name}: train_batch_size {batch} != train_micro_batch_size_per_gpu {micro}"
            f" x gradient_accumulation_steps {accum} x data-parallel size {t.dp}"
        )
    t.set("train", "micro_batch_size", micro)
    t.set("train", "gradient_accumulation_steps", accum)


def _precision(t: Translation, data: dict) -> None:
    """`bf16`/`bfloat16`/`fp16` sections -> `model.dtype` (none enabled = float32)."""
    enabled = []
    for key in _PRECISION_KEYS:
        if key not in data:
            continue
        section = t.section(data, key)
        flag = section.get("enabled", False)
        if flag not in (True, False, AUTO):
            raise t.error(f"{key}.enabled", f"must be true or false, got {flag!r}")
        if flag is True:
            enabled.append(key)
        for sub in extra(section, {"enabled"}):
            t.note(f"{key}.{sub}", "mixed-precision details; parameters stay in param_dtype")
    if {"bf16", "bfloat16"} & set(enabled) and "fp16" in enabled:
        raise t.error("bf16.enabled and fp16.enabled", "cannot both be true")
    if enabled:
        t.set("model", "dtype", "float16" if enabled[0] == "fp16" else "bfloat16")
    elif any(data[key].get("enabled", False) is False for key in _PRECISION_KEYS if key in data):
        t.set("model", "dtype", "float32")


def _zero(t: Translation, data: dict) -> None:
    section = t.section(data, "zero_optimization")
    stage = section.get("stage", 0)
    if stage != AUTO:
        if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
            raise t.error("zero_optimization.stage", f"must be 0, 1, 2 or 3, got {stage!r}")
        t.set("parallel", "zero_stage", stage)
    for key in extra(section, {"stage"}):
        where = f"zero_optimization.{key}"
        if key.startswith(("offload", "cpu_offload")):
            t.note(where, "there is no CPU/NVMe offload; state stays on the accelerator")
        elif key in _ZERO_OPTIONS:
            t.note(where, "XLA decides buckets, overlap and prefetching")
        else:
            t.notes.append(f"{t.name}: {where} is not a DeepSpeed ZeRO option; ignored")


def _tensorboard(t: Translation, data: dict) -> None:
    section = t.section(data, "tensorboard")
    if section.get("enabled") in (True, False):
        t.set("logging", "tensorboard", section["enabled"])
    if section.get("output_path"):
        job = section.get("job_name", "DeepSpeedJobName")
        t.set("logging", "tensorboard_dir", os.path.join(section["output_path"], job))
    for key in extra(section, {"enabled", "output_path", "job_name"}):
        t.notes.append(f"{t.name}: tensorboard.{key} is not a DeepSpeed option; ignored")


def overrides_from_deepspeed(
    source: Path | Mapping[str, Any], *, data_parallel_size: int = 1
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """RunConfig overrides (nested dict) and notes from a DeepSpeed config: the JSON file
    at `source`, or the config itself as a dict (as `deepspeed.initialize(config=...)`
    takes it; errors then name it `config`).

    `data_parallel_size` is DeepSpeed's world size in the batch-size rule.
    """
    if data_parallel_size < 1:
        raise ValueError(f"data_parallel_size must be >= 1, got {data_parallel_size}")
    if isinstance(source, Mapping):
        data, name = dict(source), "config"
    else:
        data, name = read_json(source), os.fspath(source)
    t = Translation(name, data_parallel_size)
    _batch_sizes(t, data)
    optimizer_lr = optimizer(t, data) if "optimizer" in data else None
    if "scheduler" in data:
        scheduler(t, data, optimizer_lr)
    if given(data, "gradient_clipping"):
        clip = t.number("gradient_clipping", data["gradient_clipping"])
        t.set("optim", "grad_clip", clip if clip > 0 else None)
    _precision(t, data)
    if "zero_optimization" in data:
        _zero(t, data)
    if "tensorboard" in data:
        _tensorboard(t, data)
    if "compression_training" in data:
        rules, notes = prune_rules(t.name, data["compression_training"])
        t.notes += notes
        if rules:
            t.set("prune", "rules", rules)
    for key in extra(data, _HANDLED):
        if key in _NO_EFFECT:
            t.note(key, _NO_EFFECT[key])
        else:
            t.notes.append(f"{t.name}: {key} is not a DeepSpeed config key; ignored")
    return t.out, t.notes
