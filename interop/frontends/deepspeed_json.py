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

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interop.errors import UserError
from interop.frontends.deepspeed_compression import prune_rules

AUTO = "auto"

# FusedAdam's defaults: what DeepSpeed builds for an optimizer section without params.
_ADAM_DEFAULTS = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
# torch.optim.AdamW's differ in one place; DeepSpeed uses it when `torch_adam` is true.
_TORCH_ADAMW_WEIGHT_DECAY = 0.01
_OPTIMIZER_NO_EFFECT = {
    "torch_adam": "the update is the same AdamW arithmetic either way",
    "fp32_optimizer_states": "optimizer state is always float32 here",
    "set_grad_none": "a PyTorch memory detail",
    "foreach": "a PyTorch kernel choice",
    "fused": "a PyTorch kernel choice",
    "capturable": "a PyTorch kernel choice",
}

_SCHEDULES = {
    "WarmupLR": "warmup_lr",
    "WarmupDecayLR": "warmup_decay_lr",
    "WarmupCosineLR": "warmup_cosine_lr",
}
_SCHEDULER_PARAMS = {
    "WarmupLR": {"warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type"},
    "WarmupDecayLR": {
        "total_num_steps",
        "warmup_min_lr",
        "warmup_max_lr",
        "warmup_num_steps",
        "warmup_type",
    },
    "WarmupCosineLR": {
        "total_num_steps",
        "warmup_min_ratio",
        "warmup_num_steps",
        "cos_min_ratio",
        "warmup_type",
    },
}

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


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """JSON object hook: a repeated key is an error, as in DeepSpeed's own loader."""
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def read_json(path: Path) -> dict:
    """The JSON object in `path`; a missing file or bad JSON is a UserError with file:line."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except OSError as exc:
        raise UserError(f"{name}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    except ValueError as exc:
        raise UserError(f"{name}: invalid DeepSpeed config ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{name}: the top level must be a JSON object, not {type(data).__name__}")
    return data


class _Translation:
    """The overrides and notes being built from one file; errors name that file."""

    def __init__(self, name: str, data_parallel_size: int) -> None:
        self.name = name
        self.dp = data_parallel_size
        self.out: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    def set(self, section: str, key: str, value: Any) -> None:
        self.out.setdefault(section, {})[key] = value

    def note(self, key: str, why: str) -> None:
        self.notes.append(f"{self.name}: {key} has no effect here ({why})")

    def error(self, key: str, message: str) -> UserError:
        return UserError(f"{self.name}: {key} {message}")

    def section(self, data: dict, key: str) -> dict:
        value = data[key]
        if not isinstance(value, dict):
            raise self.error(key, f"must be a JSON object, got {value!r}")
        return value

    def number(self, key: str, value: Any, *, integer: bool = False, minimum: float = 0) -> Any:
        """`value` checked to be a number (an int if `integer`) of at least `minimum`."""
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            kind = "an integer" if integer else "a number"
            raise self.error(key, f"must be {kind} >= {minimum:g}, got {value!r}")
        return value


def _given(data: dict, key: str) -> bool:
    return key in data and data[key] != AUTO and data[key] is not None


def _extra(section: dict, handled: set[str]) -> list[str]:
    """The keys of `section` outside `handled`, in file order."""
    return [key for key in section if key not in handled]


def _batch_sizes(t: _Translation, data: dict) -> None:
    """DeepSpeed's batch-size rule: fill the missing one of the three, then check all three."""
    keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    batch, micro, accum = (
        t.number(key, data[key], integer=True, minimum=1) if _given(data, key) else None
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


def _optimizer(t: _Translation, data: dict) -> float | None:
    """Map the optimizer section; returns its learning rate (the schedulers' default peak)."""
    section = t.section(data, "optimizer")
    kind = section.get("type")
    if not isinstance(kind, str) or kind.lower() not in ("adam", "adamw"):
        raise t.error("optimizer.type", f"{kind!r} is not supported (supported: Adam, AdamW)")
    for key in _extra(section, {"type", "params"}):
        t.notes.append(f"{t.name}: optimizer.{key} is not a DeepSpeed optimizer key; ignored")
    params = t.section(section, "params") if "params" in section else {}
    decoupled = kind.lower() == "adamw" or params.get("adam_w_mode", True) is not False
    defaults = dict(_ADAM_DEFAULTS)
    if params.get("torch_adam") is True and decoupled:
        defaults["weight_decay"] = _TORCH_ADAMW_WEIGHT_DECAY
    for key, value in params.items():
        where = f"optimizer.params.{key}"
        if key in _OPTIMIZER_NO_EFFECT:
            t.note(where, _OPTIMIZER_NO_EFFECT[key])
        elif key == "max_grad_norm":
            raise t.error(where, "is not supported by DeepSpeed; use gradient_clipping")
        elif key == "amsgrad" and value:
            raise t.error(where, "(AMSGrad) is not supported")
        elif key == "bias_correction" and value is False:
            raise t.error(where, "false is not supported: Adam is always bias-corrected here")
        elif key not in {*_ADAM_DEFAULTS, "adam_w_mode", "amsgrad", "bias_correction"}:
            raise t.error(where, f"is not a parameter of DeepSpeed's {kind}")
    values = {key: params.get(key, default) for key, default in defaults.items()}
    if _given(values, "weight_decay"):
        decay = t.number("optimizer.params.weight_decay", values["weight_decay"])
        if decay > 0 and not decoupled:
            raise t.error(
                "optimizer.params.adam_w_mode",
                "false (Adam with L2 weight decay) is not supported; use AdamW",
            )
        t.set("optim", "weight_decay", decay)
    if _given(values, "eps"):
        t.set("optim", "eps", t.number("optimizer.params.eps", values["eps"]))
    if _given(values, "betas"):
        betas = values["betas"]
        if not isinstance(betas, list) or len(betas) != 2:
            raise t.error("optimizer.params.betas", f"must be a list of two numbers, got {betas!r}")
        t.set("optim", "betas", [t.number("optimizer.params.betas", b) for b in betas])
    if not _given(values, "lr"):
        return None
    lr = t.number("optimizer.params.lr", values["lr"])
    t.set("optim", "learning_rate", lr)
    return lr


def _scheduler(t: _Translation, data: dict, optimizer_lr: float | None) -> None:
    """Map a WarmupLR / WarmupDecayLR / WarmupCosineLR section onto `schedule`."""
    section = t.section(data, "scheduler")
    kind = section.get("type")
    if kind not in _SCHEDULES:
        supported = ", ".join(_SCHEDULES)
        raise t.error("scheduler.type", f"{kind!r} is not supported (supported: {supported})")
    for key in _extra(section, {"type", "params"}):
        t.notes.append(f"{t.name}: scheduler.{key} is not a DeepSpeed scheduler key; ignored")
    params = t.section(section, "params") if "params" in section else {}
    t.set("schedule", "type", _SCHEDULES[kind])
    for key in params:
        if key == "last_batch_iteration":
            t.note(
                "scheduler.params.last_batch_iteration",
                "a resumed run takes its step from the checkpoint",
            )
        elif key not in _SCHEDULER_PARAMS[kind]:
            known = ", ".join(sorted(_SCHEDULER_PARAMS[kind]))
            raise t.error(f"scheduler.params.{key}", f"is not a parameter of {kind} ({known})")
    warmup = params.get("warmup_num_steps", 1000)
    if warmup != AUTO:
        key = "scheduler.params.warmup_num_steps"
        t.set("schedule", "warmup_steps", t.number(key, warmup, integer=True, minimum=1))
    warmup_type = params.get("warmup_type", "log")
    if warmup_type not in ("log", "linear"):
        raise t.error(
            "scheduler.params.warmup_type", f"must be 'log' or 'linear', got {warmup_type!r}"
        )
    t.set("schedule", "warmup_type", warmup_type)
    defaults = {"warmup_min_lr": 0.0, "warmup_min_ratio": 0.0, "cos_min_ratio": 1e-4}
    for key, default in defaults.items():
        value = params.get(key, default)
        if key in _SCHEDULER_PARAMS[kind] and value != AUTO:
            t.set("schedule", key, t.number(f"scheduler.params.{key}", value))
    if "total_num_steps" in _SCHEDULER_PARAMS[kind]:
        total = params.get("total_num_steps")
        if total is None:
            t.notes.append(
                f"{t.name}: scheduler.params.total_num_steps is missing (DeepSpeed requires it);"
                " the run's length is used"
            )
        elif total != AUTO:
            key = "scheduler.params.total_num_steps"
            t.set("schedule", "total_steps", t.number(key, total, integer=True, minimum=1))
    _peak(t, kind, params, optimizer_lr)


def _peak(t: _Translation, kind: str, params: dict, optimizer_lr: float | None) -> None:
    """The scheduler's peak becomes `optim.learning_rate` (it overrides the optimizer's lr)."""
    if kind == "WarmupCosineLR":
        return  # a ratio schedule: its peak is the optimizer's lr, already mapped
    peak = params.get("warmup_max_lr", 0.001 if kind == "WarmupDecayLR" else optimizer_lr)
    if peak is None or peak == AUTO:
        return
    peak = t.number("scheduler.params.warmup_max_lr", peak)
    if optimizer_lr is not None and peak != optimizer_lr:
        t.notes.append(
            f"{t.name}: optimizer.params.lr {optimizer_lr:g} is replaced by {kind}'s peak"
            f" {peak:g} (the scheduler sets every step's learning rate)"
        )
    t.set("optim", "learning_rate", peak)


def _precision(t: _Translation, data: dict) -> None:
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
        for sub in _extra(section, {"enabled"}):
            t.note(f"{key}.{sub}", "mixed-precision details; parameters stay in param_dtype")
    if {"bf16", "bfloat16"} & set(enabled) and "fp16" in enabled:
        raise t.error("bf16.enabled and fp16.enabled", "cannot both be true")
    if enabled:
        t.set("model", "dtype", "float16" if enabled[0] == "fp16" else "bfloat16")
    elif any(data[key].get("enabled", False) is False for key in _PRECISION_KEYS if key in data):
        t.set("model", "dtype", "float32")


def _zero(t: _Translation, data: dict) -> None:
    section = t.section(data, "zero_optimization")
    stage = section.get("stage", 0)
    if stage != AUTO:
        if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
            raise t.error("zero_optimization.stage", f"must be 0, 1, 2 or 3, got {stage!r}")
        t.set("parallel", "zero_stage", stage)
    for key in _extra(section, {"stage"}):
        where = f"zero_optimization.{key}"
        if key.startswith(("offload", "cpu_offload")):
            t.note(where, "there is no CPU/NVMe offload; state stays on the accelerator")
        elif key in _ZERO_OPTIONS:
            t.note(where, "XLA decides buckets, overlap and prefetching")
        else:
            t.notes.append(f"{t.name}: {where} is not a DeepSpeed ZeRO option; ignored")


def _tensorboard(t: _Translation, data: dict) -> None:
    section = t.section(data, "tensorboard")
    if section.get("enabled") in (True, False):
        t.set("logging", "tensorboard", section["enabled"])
    if section.get("output_path"):
        job = section.get("job_name", "DeepSpeedJobName")
        t.set("logging", "tensorboard_dir", os.path.join(section["output_path"], job))
    for key in _extra(section, {"enabled", "output_path", "job_name"}):
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
    t = _Translation(name, data_parallel_size)
    _batch_sizes(t, data)
    optimizer_lr = _optimizer(t, data) if "optimizer" in data else None
    if "scheduler" in data:
        _scheduler(t, data, optimizer_lr)
    if _given(data, "gradient_clipping"):
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
    for key in _extra(data, _HANDLED):
        if key in _NO_EFFECT:
            t.note(key, _NO_EFFECT[key])
        else:
            t.notes.append(f"{t.name}: {key} is not a DeepSpeed config key; ignored")
    return t.out, t.notes
