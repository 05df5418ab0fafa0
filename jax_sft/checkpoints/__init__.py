"""Reading and writing model checkpoints from the JAX side (HF and Orbax)."""
