"""Orbax model checkpoints: `config.json` (the HF config) + `params/` (an Orbax tree).

The tree is the model's parameters nested by our dotted paths, stored in their own dtype,
so HF -> Orbax -> HF changes no bit. Tokenizer files travel beside `config.json`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from interop.checkpoints.formats import ORBAX_PARAMS
from interop.checkpoints.hf import HF_TOKENIZER_FILES, read_hf_config


def nest(flat: Mapping[str, object]) -> dict:
    """{'a.0.b': x} -> {'a': {'0': {'b': x}}}."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """Inverse of `nest`."""
    out: dict = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def save_orbax_model(
    dst: Path, flat: Mapping[str, np.ndarray], hf_config: dict, tokenizer_src: Path | None = None
) -> None:
    """Write a model checkpoint into the existing directory `dst`."""
    (dst / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if tokenizer_src is not None:
        for name in HF_TOKENIZER_FILES:
            if (tokenizer_src / name).is_file():
                shutil.copy2(tokenizer_src / name, dst / name)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save((dst / ORBAX_PARAMS).absolute(), nest(flat))


def restore_orbax_model(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config, flat numpy state in the stored dtypes)."""
    params = (path / ORBAX_PARAMS).absolute()
    with ocp.StandardCheckpointer() as ckpt:
        meta = ckpt.metadata(params).item_metadata.tree
        target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), meta)
        tree = ckpt.restore(params, target)
    return read_hf_config(path), flatten(tree)
