"""Output directories that never lose what the user had.

A command writes into a fresh temporary directory beside its destination; only when the
whole write succeeds does the result take the destination's name. An existing destination
is refused unless the user said `--overwrite`, and even then it is replaced only after the
new one is complete.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interop.errors import UserError


@contextmanager
def output_dir(dst: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory that becomes `dst` when the block exits cleanly."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} exists; pass --overwrite to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = dst.parent / f".{dst.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dst.parent / f".{dst.name}.old-{tag}"
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
