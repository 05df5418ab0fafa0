"""Growing a JAX model's vocabulary by the shared rule (`interop.vocab`): which
dimensions are vocabulary dimensions is read from the parameters' logical axes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx

from interop.vocab import grown, padded_vocab
from jax_sft.models import registry


def vocab_growth(
    hf_config: Mapping, n_tokens: int
) -> tuple[dict, dict[str, Callable[[np.ndarray], np.ndarray]]]:
    """(config, {path: f(weight) -> the weight grown}) with room for `n_tokens`; no
    change when the model already has it. Each f grows one tensor, so loading can grow
    tensors one at a time."""
    if n_tokens <= hf_config["vocab_size"]:
        return dict(hf_config), {}
    new_size = padded_vocab(n_tokens)
    abstract = nnx.eval_shape(lambda: registry.build_model(hf_config))
    growth = {}
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        names = var.get_metadata()["axes"]
        if "vocab" in names:
            axis = names.index("vocab")
            growth[registry.path_str(path)] = functools.partial(grown, new_size=new_size, axis=axis)
    return {**hf_config, "vocab_size": new_size}, growth
