"""The JAX/Flax backend of jax-sft. Never imports torch.

`engine, optimizer, dataloader, lr_scheduler = jax_sft.initialize(model=..., config=...,
training_data=...)` is DeepSpeed's `initialize` on this backend (`jax_sft.train.api`);
`jax-sft` is the command line (`jax_sft.cli`). `initialize` is imported on first use, so
that the command line can set up its process before JAX is imported (`jax_sft.huge_pages`).
"""

from __future__ import annotations

__all__ = ["initialize"]


def __getattr__(name: str):
    if name == "initialize":
        from jax_sft.train.api import initialize

        return initialize
    raise AttributeError(f"module 'jax_sft' has no attribute {name!r}")
