"""Growing a JAX model's vocabulary by the shared rule (`interop.vocab`): which
dimensions are vocabulary dimensions is read from the parameters' logical axes.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from interop.vocab import grown, padded_vocab
from jax_sft.models import registry


def resize_vocab(
    hf_config: dict, flat: dict[str, np.ndarray], n_tokens: int
) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, flat state) with room for `n_tokens`; unchanged when there already is."""
    if n_tokens <= hf_config["vocab_size"]:
        return hf_config, flat
    new_size = padded_vocab(n_tokens)
    abstract = nnx.eval_shape(lambda: registry.build_model(hf_config))
    axes = {
        registry.path_str(p): v.get_metadata()["axes"]
        for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    }
    out = dict(flat)
    for path, names in axes.items():
        if "vocab" not in names:
            continue
        out[path] = grown(flat[path], new_size, names.index("vocab"))
    return {**hf_config, "vocab_size": new_size}, out
