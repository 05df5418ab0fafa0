"""The fields of a Hugging Face `config.json` that the supported families are built from,
checked when the file is read, so a missing or mistyped size is one line naming the file
and the field (both backends), not a KeyError or a TypeError deep in model code."""

from __future__ import annotations

from collections.abc import Mapping

from interop.errors import UserError

_DECODER = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
REQUIRED = {
    "llama": (*_DECODER, "intermediate_size"),
    "qwen2": (*_DECODER, "intermediate_size"),
    "mistral": (*_DECODER, "intermediate_size"),
    "opt": (*_DECODER, "ffn_dim", "max_position_embeddings"),
    "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions"),
}
# Sizes that must be positive integers when present.
OPTIONAL = (
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "word_embed_proj_dim",
    "n_inner",
    "sliding_window",
)


def check_hf_config(config: Mapping, source: str) -> None:
    """Every size the model type needs is there and is a positive integer."""
    required = REQUIRED.get(config.get("model_type"), ())
    for field in required:
        if field not in config:
            raise UserError(f"{source}: no '{field}', which a {config['model_type']} model needs")
    for field in (*required, *OPTIONAL):
        value = config.get(field)
        if value is None and field not in required:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{source}: '{field}' must be a positive integer, got {value!r}")
