"""Masks as bits: eight entries to a byte, along the last axis, in the train state.

A bool array costs a byte per entry, a quarter of the fp32 weight it masks; packed, a
mask costs an eighth of that. Packing runs along the last axis of our layout (padded to
a whole byte), whatever the mesh, so a checkpoint's masks do not depend on where they
were trained; the packed array is placed like its weight (`sharding.placement`). The
jitted step unpacks a mask where it applies it, which XLA fuses into the `where`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def pack(mask: jax.Array) -> jax.Array:
    return jnp.packbits(mask, axis=-1, bitorder="little")


def unpack(packed: jax.Array, width: int) -> jax.Array:
    """The bool mask whose last axis has `width` entries."""
    return jnp.unpackbits(packed, axis=-1, count=width, bitorder="little").astype(bool)


def pack_host(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, bool), axis=-1, bitorder="little")


def unpack_host(packed: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(np.asarray(packed), axis=-1, count=width, bitorder="little").astype(bool)
