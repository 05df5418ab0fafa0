"""The keywords of `initialize(...)`, DeepSpeed's and the founding document's, turned into a
RunConfig once for both backends (`jax_sft.initialize`, `torch_ref.initialize`).

DeepSpeed's: `config` (a ds_config dict or JSON path; also a RunConfig or its YAML path),
`config_params` (its old name), `args.deepspeed_config`, `model` (a model directory or an
adapter), `training_data` (a data file or a list of example dicts), `optimizer` (a dict
of `optim` settings), `dist_init_required` (the backend joins its other processes unless
it is False). The founding document's: `data_loader=`
(training data), `optimizer={"learning_rate": ...}`, `loss_fn="cross_entropy"`,
`num_microbatches=` (accumulation steps), `sparse=True` (the default sparse method) or
`sparse={...}` (the `sparse` section). What cannot be honoured here (a torch optimizer
object, `model_parameters`, `lr_scheduler`, `collate_fn`, `mpu`, another `loss_fn`) is
refused by name. Precedence, lowest first: the config, then the keywords.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interop.config import DEFAULT_SPARSE_METHOD, RunConfig, load_config
from interop.errors import UserError
from interop.frontends.deepspeed_json import overrides_from_deepspeed

LOSS_FUNCTIONS = (None, "cross_entropy")
REFUSED = {
    "model_parameters": "the run's training mode chooses what trains (the sparse and lora "
    "sections)",
    "lr_scheduler": "the schedule comes from the config's scheduler (or schedule section)",
    "collate_fn": "batches are built by the data pipeline (padding or packing)",
    "mpu": "model parallelism comes from the parallel section",
}


@dataclass
class Resolved:
    cfg: RunConfig
    records: list | None  # training examples given in memory
    notes: list[str]


def resolve(
    *,
    data_parallel_size: Callable[[RunConfig], int],
    args: Any = None,
    model: str | Path | None = None,
    optimizer: Any = None,
    training_data: Any = None,
    config: Any = None,
    config_params: Any = None,
    data_loader: Any = None,
    loss_fn: str | None = None,
    num_microbatches: int | None = None,
    sparse: bool | Mapping | None = None,
    dist_init_required: bool | None = None,  # acted on by the backend, before this runs
    **refused: Any,
) -> Resolved:
    """The run a call to `initialize` describes. `data_parallel_size(cfg)` gives the
    backend's data-parallel size for a DeepSpeed config's batch-size rule."""
    for key, value in refused.items():
        if key not in REFUSED:
            raise UserError(f"initialize: unknown keyword {key}")
        if value is not None:
            raise UserError(f"initialize: {key} is not supported here: {REFUSED[key]}")
    if loss_fn not in LOSS_FUNCTIONS:
        raise UserError(
            f"loss_fn: {loss_fn!r} is not supported; the loss is the causal-LM "
            "'cross_entropy' over the scored tokens"
        )
    if training_data is not None and data_loader is not None:
        raise UserError("training_data and data_loader: give the training data once")
    data = training_data if training_data is not None else data_loader
    if optimizer is not None and not isinstance(optimizer, Mapping):
        raise UserError(
            f"optimizer: a {type(optimizer).__name__} cannot be used; give the optim settings "
            'as a dict (e.g. {"learning_rate": 1e-4}) or in the config'
        )
    yaml_path, base, ds_source = _config_source(config, config_params, args)
    keywords: dict[str, dict] = {}
    if model is not None:
        keywords["model"] = {"path": str(model), "tiny": None}
    if data is not None:  # the training data replaces the config's sources
        sources = [{"path": str(data)}] if isinstance(data, str | Path) else []
        keywords["data"] = {"sources": sources}
    if optimizer is not None:
        keywords["optim"] = dict(optimizer)
    if num_microbatches is not None:
        keywords["train"] = {"gradient_accumulation_steps": num_microbatches}
    if sparse is True or isinstance(sparse, Mapping):
        section = dict(sparse) if isinstance(sparse, Mapping) else {}
        keywords["sparse"] = {"method": DEFAULT_SPARSE_METHOD, **section}
    elif sparse not in (None, False):
        raise UserError(f"sparse: expected True or a dict of sparse settings, got {sparse!r}")
    first, last = [("config", base)], [("initialize(...)", keywords)]
    notes: list[str] = []
    if ds_source is not None:
        dp = data_parallel_size(load_config(yaml_path, (), first + last))
        overrides, notes = overrides_from_deepspeed(ds_source, data_parallel_size=dp)
        first.append((str(ds_source) if isinstance(ds_source, Path) else "config", overrides))
    cfg = load_config(yaml_path, (), first + last)
    records = list(data) if isinstance(data, list | tuple) else None
    if data is not None and records is None and not isinstance(data, str | Path):
        raise UserError(
            f"training_data: a {type(data).__name__}; give a data file or a list of example dicts"
        )
    return Resolved(cfg, records, notes)


def _config_source(config: Any, config_params: Any, args: Any) -> tuple:
    """(run config YAML path or None, a RunConfig's fields or {}, DeepSpeed config (a dict
    or a JSON path) or None) of the `config` given one of DeepSpeed's three ways."""
    if config is not None and config_params is not None:
        raise UserError("config and config_params: give the config once")
    config = config if config is not None else config_params
    if config is None and getattr(args, "deepspeed_config", None):
        config = args.deepspeed_config
    if config is None:
        return None, {}, None
    if isinstance(config, RunConfig):
        return None, config.model_dump(mode="json", by_alias=True), None
    if isinstance(config, Mapping):
        return None, {}, config
    path = Path(config)
    if path.suffix == ".json":
        return None, {}, path
    if path.suffix in (".yaml", ".yml"):
        return path, {}, None
    raise UserError(f"config: {path} is neither a DeepSpeed .json nor a run config .yaml")
