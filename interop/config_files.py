"""A `RunConfig` from files: YAML read, layers merged, `--set` overrides applied, and
every mistake one line that names its source; and the config written back as YAML.

Precedence, lowest first: the schema's defaults (`interop.config`), the YAML file, each
layer (a DeepSpeed JSON config, DeepSpeed-Chat flags, translated elsewhere), the `--set`
items. An error names the `--set` item that set the bad key, else the layer, else the file.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from interop.config import RunConfig
from interop.errors import UserError


def _split_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise UserError(f"--set {item}: expected KEY=VALUE with a dotted KEY, e.g. train.seed=1")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"--set {item}: the value is not valid YAML") from None
    return keys, value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """A copy of `data` with each `a.b=value` applied in order (value parsed as YAML).

    Missing intermediate mappings are created; the schema is checked later, by validation.
    """
    result = copy.deepcopy(data)
    for item in overrides:
        keys, value = _split_override(item)
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise UserError(f"--set {item}: {where} is {child!r}, not a section")
            node = child
        node[keys[-1]] = value
    return result


def _read_yaml(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UserError(f"{path}{where}: invalid YAML ({problem})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise UserError(f"{path}: the top level must be a mapping of sections, not a {kind}")
    # A section whose keys are all commented out reads as null; treat it as empty.
    return {key: {} if value is None else value for key, value in raw.items()}


def describe_error(error: dict) -> tuple[str, str]:
    """The dotted location of one pydantic error and a one-line message for it."""
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return loc, f"unknown key '{loc}'"
    if error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"]
    return loc, f"{loc}: {message}" if loc else message


def _source(path: str | os.PathLike | None, loc: str, overrides: Sequence[str]) -> str:
    """Who to name for an error at `loc`: the `--set` item that set it, else the file.

    An override that set `loc` or a section containing it takes the blame alone; one that
    set a key inside `loc` (a section-level check failed) is named beside the file.
    """
    inside = None
    for item in reversed(overrides):
        key = item.partition("=")[0].strip()
        if key == loc or loc.startswith(key + "."):
            return f"--set {item}"
        if inside is None and key.startswith(loc + "."):
            inside = item
    if inside is None:
        return os.fspath(path) if path is not None else "--set"
    return f"--set {inside}" if path is None else f"{os.fspath(path)} with --set {inside}"


def deep_merge(base: dict, top: dict) -> dict:
    """A copy of `base` with `top`'s values laid over it, section by section."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_by(layer: dict, loc: str) -> bool:
    node: Any = layer
    for part in loc.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def load_config(
    path: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    layers: Sequence[tuple[str, dict]] = (),
) -> RunConfig:
    """Read a YAML run config (None = all defaults), lay `layers` over it, apply `--set`.

    Precedence, lowest first: defaults, the YAML file, each (source name, nested dict)
    layer in order (e.g. a DeepSpeed JSON config), `--set` overrides. Every mistake
    raises UserError with one line naming the file, layer or `--set` item and the key.
    """
    data = _read_yaml(path) if path is not None else {}
    for _, layer in layers:
        data = deep_merge(data, layer)
    data = apply_overrides(data, overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        loc, message = describe_error(exc.errors()[0])
        source = _source(path, loc, overrides)
        if not any(source.startswith(f"--set {item}") for item in overrides):
            source = next((name for name, layer in reversed(layers) if _set_by(layer, loc)), source)
        raise UserError(f"{source}: {message}") from None


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML text, every field written out; `load_config` reads it back equal."""
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
