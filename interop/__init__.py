"""Framework-neutral parts of jax-sft: config schema, data, checkpoint formats, parity.

Imports numpy and safetensors at module level; torch only lazily inside the readers and
writers of pickled files; jax never.
"""
