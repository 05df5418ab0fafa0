"""The JAX/Flax backend of jax-sft. Never imports torch."""
