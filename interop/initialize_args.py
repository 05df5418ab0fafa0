"""The arguments of `initialize(...)`, DeepSpeed's and the founding document's, turned into
a RunConfig once for both backends (`jax_sft.initialize`, `torch_ref.initialize`).

DeepSpeed's, positional in its order: `args` (its `deepspeed_config`), `model` (a model
directory or an adapter), `optimizer` (a dict of `optim` settings), `training_data` (a
data file or a list of example dicts), `dist_init_required` (the backend joins its other
processes unless it is False), `config` (a ds_config dict or JSON path; also a RunConfig
or its YAML path), `config_params` (the old name of `config`). The founding document's:
`data_loader=` (training data), `optimizer={"learning_rate": ...}`,
`loss_fn="cross_entropy"`, `num_microbatches=` (accumulation steps), `sparse=True` (the
default sparse method) or `sparse={...}` (the `sparse` section). What cannot be honoured
here (a torch optimizer object, `model_parameters`, `lr_scheduler`, `distributed_port`,
`mpu`, `collate_fn`, `mesh_param`, another `loss_fn`) is refused by name. Precedence,
lowest first: the config, then the other arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interop.adapter_config import DEFAULT_SPARSE_METHOD
from interop.config import RunConfig
from interop.config_files import load_config
from interop.errors import UserError
from interop.frontends.deepspeed_json import overrides_from_deepspeed

# deepspeed.initialize's parameters, in its order.
DEEPSPEED = (
    "args",
    "model",
    "optimizer",
    "model_parameters",
    "training_data",
    "lr_scheduler",
    "distributed_port",
    "mpu",
    "dist_init_required",
    "collate_fn",
    "config",
    "mesh_param",
    "config_params",
)
FOUNDING = ("data_loader", "loss_fn", "num_microbatches", "sparse")
REFUSED = {
    "model_parameters": "the run's training mode chooses what trains (the sparse and lora "
    "sections)",
    "lr_scheduler": "the schedule comes from the config's scheduler (or schedule section)",
    "distributed_port": "processes meet where JAX_COORDINATOR_ADDRESS or torchrun's "
    "MASTER_ADDR/MASTER_PORT say",
    "mpu": "model parallelism comes from the parallel section",
    "collate_fn": "batches are built by the data pipeline (padding or packing)",
    "mesh_param": "the mesh comes from the parallel section",
}
LOSS_FUNCTIONS = (None, "cross_entropy")


@dataclass
class Resolved:
    cfg: RunConfig
    records: list | None  # training examples given in memory
    notes: list[str]


def arguments(args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """initialize's arguments by name (positional ones in DeepSpeed's order), checked."""
    if len(args) > len(DEEPSPEED):
        raise UserError(f"initialize: at most {len(DEEPSPEED)} positional arguments")
    named = dict(zip(DEEPSPEED, args, strict=False))
    for key, value in kwargs.items():
        if key in named:
            raise UserError(f"initialize: {key} given twice")
        if key not in DEEPSPEED and key not in FOUNDING:
            raise UserError(f"initialize: unknown argument {key}")
        named[key] = value
    for key, why in REFUSED.items():
        if named.get(key) is not None:
            raise UserError(f"initialize: {key} is not supported here: {why}")
    if named.get("loss_fn") not in LOSS_FUNCTIONS:
        raise UserError(
            f"loss_fn: {named['loss_fn']!r} is not supported; the loss is the causal-LM "
            "'cross_entropy' over the scored tokens"
        )
    return named


def resolve(named: Mapping[str, Any], data_parallel_size: Callable[[RunConfig], int]) -> Resolved:
    """The run `arguments` describe; `data_parallel_size(cfg)` is the backend's
    data-parallel size, for a DeepSpeed config's batch-size rule."""
    data, optimizer = named.get("training_data"), named.get("optimizer")
    if data is not None and named.get("data_loader") is not None:
        raise UserError("training_data and data_loader: give the training data once")
    data = data if data is not None else named.get("data_loader")
    if data is not None and not isinstance(data, str | Path | list | tuple):
        raise UserError(
            f"training_data: a {type(data).__name__}; give a data file or a list of example dicts"
        )
    if optimizer is not None and not isinstance(optimizer, Mapping):
        raise UserError(
            f"optimizer: a {type(optimizer).__name__} cannot be used; give the optim settings "
            'as a dict (e.g. {"learning_rate": 1e-4}) or in the config'
        )
    yaml_path, base, ds_source = _config_source(named)
    first, last = [("config", base)], [("initialize(...)", _keyword_sections(named, data))]
    notes: list[str] = []
    if ds_source is not None:
        dp = data_parallel_size(load_config(yaml_path, (), first + last))
        overrides, notes = overrides_from_deepspeed(ds_source, data_parallel_size=dp)
        first.append((str(ds_source) if isinstance(ds_source, Path) else "config", overrides))
    records = list(data) if isinstance(data, list | tuple) else None
    return Resolved(load_config(yaml_path, (), first + last), records, notes)


def _keyword_sections(named: Mapping[str, Any], data: Any) -> dict[str, dict]:
    """The RunConfig sections the arguments other than the config set."""
    sections: dict[str, dict] = {}
    if named.get("model") is not None:
        sections["model"] = {"path": str(named["model"]), "tiny": None}
    if data is not None:  # the training data replaces the config's sources
        sources = [{"path": str(data)}] if isinstance(data, str | Path) else []
        sections["data"] = {"sources": sources}
    if named.get("optimizer") is not None:
        sections["optim"] = dict(named["optimizer"])
    if named.get("num_microbatches") is not None:
        sections["train"] = {"gradient_accumulation_steps": named["num_microbatches"]}
    sparse = named.get("sparse")
    if sparse is True or isinstance(sparse, Mapping):
        given = dict(sparse) if isinstance(sparse, Mapping) else {}
        sections["sparse"] = {"method": DEFAULT_SPARSE_METHOD, **given}
    elif sparse not in (None, False):
        raise UserError(f"sparse: expected True or a dict of sparse settings, got {sparse!r}")
    return sections


def _config_source(named: Mapping[str, Any]) -> tuple:
    """(run config YAML path or None, a RunConfig's fields or {}, DeepSpeed config (a dict
    or a JSON path) or None) of the config, given in one of DeepSpeed's three ways."""
    config, params = named.get("config"), named.get("config_params")
    if config is not None and params is not None:
        raise UserError("config and config_params: give the config once")
    config = config if config is not None else params
    if config is None and getattr(named.get("args"), "deepspeed_config", None):
        config = named["args"].deepspeed_config
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
