"""Pruning as a training mode: the model trains whole while masks hold chosen entries at
exactly zero; the cuts follow the run's `prune` rules (`interop.pruning`)."""
