"""The JAX/Flax backend of jax-sft. Never imports torch.

`engine, optimizer, dataloader, lr_scheduler = jax_sft.initialize(model=..., config=...,
training_data=...)` is DeepSpeed's `initialize` on this backend (`jax_sft.train.api`);
`jax-sft` is the command line (`jax_sft.cli`).
"""

from jax_sft.train.api import initialize

__all__ = ["initialize"]
