"""Which family serves a `model_type`, and building models from configs and flat states.

A "flat state" is a dict from our dotted parameter paths (`layers.0.mlp.up_proj.kernel`)
to arrays: the form every converter speaks. Abstract shapes come from `nnx.eval_shape`,
so checking a checkpoint against its config allocates nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType

import jax.numpy as jnp
import numpy as np
from flax import nnx

from interop.errors import UserError
from jax_sft.models import gpt2, llama, opt, stacked
from jax_sft.models.hf_names import NameTable


@dataclass(frozen=True)
class Family:
    config_from_hf: Callable[[dict], object]
    model_cls: type[nnx.Module]
    name_table: Callable[[object], NameTable]
    scans: bool  # whether its decoder layers can be stacked (`model.scan_layers`)


def _family(module: ModuleType, config_cls: type, model_cls: type[nnx.Module]) -> Family:
    return Family(config_cls.from_hf, model_cls, module.name_table, module.SCANS)


FAMILIES: dict[str, Family] = {}
for _module, _cfg, _model in (
    (llama, llama.LlamaConfig, llama.Llama),
    (opt, opt.OPTConfig, opt.OPT),
    (gpt2, gpt2.GPT2Config, gpt2.GPT2),
):
    for _type in _module.MODEL_TYPES:
        FAMILIES[_type] = _family(_module, _cfg, _model)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def family_of(hf_config: Mapping, source: str = "config.json") -> Family:
    kind = hf_config.get("model_type")
    if kind not in FAMILIES:
        raise UserError(
            f"{source}: unsupported model_type '{kind}' (supported: {', '.join(sorted(FAMILIES))})"
        )
    return FAMILIES[kind]


def name_table(hf_config: Mapping) -> NameTable:
    family = family_of(hf_config)
    return family.name_table(family.config_from_hf(dict(hf_config)))


def build_model(
    hf_config: Mapping,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    seed: int = 0,
    remat: bool = False,
    scan_layers: bool = False,
) -> nnx.Module:
    """A randomly initialised model (HF's normal(initializer_range) init); with
    `scan_layers`, its decoder layers stacked (`models.stacked`), same initial values."""
    family = family_of(hf_config)
    cfg = family.config_from_hf(dict(hf_config))
    kw = {"scan_layers": True} if scan_layers else {}
    if scan_layers and not family.scans:
        raise UserError(
            f"model.scan_layers: not supported for model_type '{hf_config['model_type']}'"
        )
    return family.model_cls(
        cfg,
        dtype=DTYPES[dtype],
        param_dtype=DTYPES[param_dtype],
        remat=remat,
        rngs=nnx.Rngs(seed),
        **kw,
    )


def path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def flat_state(model: nnx.Module, fetch: Callable = lambda a: a) -> dict[str, object]:
    """The model's parameters as {dotted path: fetch(array)}, per layer even where the
    model holds its layers stacked (split after `fetch`, e.g. a gather to the host)."""
    state = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return stacked.unstack_flat({path_str(p): fetch(v.get_value()) for p, v in state})


def param_axes(model: nnx.Module) -> dict:
    """The logical axis names of every parameter, nested like `nnx.to_pure_dict`."""
    tree: dict = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = tuple(var.get_metadata()["axes"])
    return tree


def expected_shapes(hf_config: Mapping, param_dtype: str = "float32") -> dict[str, tuple]:
    """Parameter shapes of the model a config describes, computed without allocating."""
    abstract = nnx.eval_shape(lambda: build_model(hf_config, param_dtype=param_dtype))
    return {k: tuple(v.shape) for k, v in flat_state(abstract).items()}


def model_from_flat(
    hf_config: Mapping,
    tensors: Iterable[tuple[str, np.ndarray]],
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    remat: bool = False,
) -> nnx.Module:
    """A model holding the given (path, array) pairs, cast to `param_dtype`.

    Consumes the pairs one at a time, so a streaming reader never holds a second copy.
    """
    abstract = nnx.eval_shape(
        lambda: build_model(hf_config, dtype=dtype, param_dtype=param_dtype, remat=remat)
    )
    graphdef, state = nnx.split(abstract)
    variables = {path_str(p): v for p, v in nnx.to_flat_state(state)}
    target = DTYPES[param_dtype]
    filled: set[str] = set()
    for key, array in tensors:
        if key not in variables:
            raise UserError(f"unexpected parameter {key}")
        variables[key].set_value(jnp.asarray(array, dtype=target))
        filled.add(key)
    missing = sorted(set(variables) - filled)
    if missing:
        raise UserError(f"missing parameter {missing[0]}")
    return nnx.merge(graphdef, state)
