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


# A run's output directory: kept on --overwrite (the cached tiny base model).
KEEP_ON_OVERWRITE = ("base",)


def has_checkpoint(out: Path) -> bool:
    """Whether a run directory holds a checkpoint to resume (either backend's)."""
    return (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())


def check_run_dir(
    out: Path, *, overwrite: bool, resume: bool, allow_existing: bool = False
) -> None:
    """Both trainers' rules for `train.output_dir`, changing nothing: a directory holding
    a checkpoint is resumed; one holding anything else is refused unless `overwrite`
    (or `allow_existing`: DeepSpeed-Chat's scripts create it and log into it first)."""
    if resume and not has_checkpoint(out):
        raise UserError(f"--resume: {out} holds no checkpoint")
    if overwrite or allow_existing or not out.exists() or has_checkpoint(out):
        return
    if any(c.name not in KEEP_ON_OVERWRITE for c in out.iterdir()):
        raise UserError(
            f"train.output_dir: {out} exists and holds no checkpoint to resume; "
            "pass --overwrite to replace it"
        )


def clear_run_dir(out: Path, *, overwrite: bool) -> None:
    """With `overwrite`, empty `out` but for what `KEEP_ON_OVERWRITE` names; create it."""
    if overwrite and out.exists():
        for child in out.iterdir():
            if child.name not in KEEP_ON_OVERWRITE:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)


@contextmanager
def removed_if_refused(out: Path, created: bool) -> Iterator[None]:
    """A run refused while starting (a UserError) leaves no trace: the output directory
    it `created` goes again if nothing was written into it."""
    try:
        yield
    except UserError:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
