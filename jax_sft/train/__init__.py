"""The JAX SFT trainer: loss, optimizer, the jitted step, checkpoints and the loop."""
