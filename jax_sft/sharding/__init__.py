"""Meshes and placements: how a run's arrays are laid over devices (ZeRO 0-3, tensor)."""
