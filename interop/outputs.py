"""Output directories that never lose what the user had.

A command writes into a fresh temporary directory beside its destination; only when the
whole write succeeds does the result take the destination's name. An existing destination
is refused unless the user said `--overwrite`, and even then it is replaced only after the
new one is complete.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interop.errors import UserError


@contextmanager
def output_dir(dst: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory that becomes `dst` when the block exits cleanly.

    On an exception the temporary directory is removed and `dst` is left as it was.
    """
    dst = Path(dst)
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise UserError(f"{dst} exists; pass --overwrite to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(4)
    tmp = dst.parent / f".{dst.name}.tmp-{tag}"
    # mkdir, not tempfile.mkdtemp: the result keeps the umask's permissions, not 0700.
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dst.parent / f".{dst.name}.old-{tag}"
    if not (dst.exists() or dst.is_symlink()):
        tmp.rename(dst)
        return
    dst.rename(old)
    tmp.rename(dst)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
