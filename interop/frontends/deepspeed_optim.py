"""The `optimizer` and `scheduler` sections of a DeepSpeed config, as `optim.*` and
`schedule.*` overrides, by the rules listed in `interop.frontends.deepspeed_json`:
DeepSpeed's defaults fill what a section leaves out, the scheduler's peak becomes the
learning rate, and what would change the arithmetic and cannot be honoured is an error."""

from __future__ import annotations

from interop.frontends.deepspeed_translation import AUTO, Translation, extra, given

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


def optimizer(t: Translation, data: dict) -> float | None:
    """Map the optimizer section; returns its learning rate (the schedulers' default peak)."""
    section = t.section(data, "optimizer")
    kind = section.get("type")
    if not isinstance(kind, str) or kind.lower() not in ("adam", "adamw"):
        raise t.error("optimizer.type", f"{kind!r} is not supported (supported: Adam, AdamW)")
    for key in extra(section, {"type", "params"}):
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
    if given(values, "weight_decay"):
        decay = t.number("optimizer.params.weight_decay", values["weight_decay"])
        if decay > 0 and not decoupled:
            raise t.error(
                "optimizer.params.adam_w_mode",
                "false (Adam with L2 weight decay) is not supported; use AdamW",
            )
        t.set("optim", "weight_decay", decay)
    if given(values, "eps"):
        t.set("optim", "eps", t.number("optimizer.params.eps", values["eps"]))
    if given(values, "betas"):
        betas = values["betas"]
        if not isinstance(betas, list) or len(betas) != 2:
            raise t.error("optimizer.params.betas", f"must be a list of two numbers, got {betas!r}")
        t.set("optim", "betas", [t.number("optimizer.params.betas", b) for b in betas])
    if not given(values, "lr"):
        return None
    lr = t.number("optimizer.params.lr", values["lr"])
    t.set("optim", "learning_rate", lr)
    return lr


def scheduler(t: Translation, data: dict, optimizer_lr: float | None) -> None:
    """Map a WarmupLR / WarmupDecayLR / WarmupCosineLR section onto `schedule`."""
    section = t.section(data, "scheduler")
    kind = section.get("type")
    if kind not in _SCHEDULES:
        supported = ", ".join(_SCHEDULES)
        raise t.error("scheduler.type", f"{kind!r} is not supported (supported: {supported})")
    for key in extra(section, {"type", "params"}):
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


def _peak(t: Translation, kind: str, params: dict, optimizer_lr: float | None) -> None:
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
