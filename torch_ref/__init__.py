"""The PyTorch/DeepSpeed reference backend of jax-sft. Never imports jax."""
