"""The JAX/Flax backend of jax-sft. Never imports torch.

`jax_sft.initialize(config=..., model=...)` returns the training `Engine` of a run, with
`train_batch`, `evaluate`, `save_checkpoint` and `load_checkpoint` as in DeepSpeed.
"""

from jax_sft.train.run import initialize

__all__ = ["initialize"]
