"""Output directories that never lose what the user had.

A command writes into a fresh temporary directory beside its destination; only when the
whole write succeeds does the result take the destination's name. An existing destination
is refused unless the user said `--overwrite`, and even then it is replaced only after the
new one is complete.
"""

from __future__ import annotations

import json
import os
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
    for parent in dst.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{dst}: {parent} is a file, not a directory")
            break
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


def write_json(dst: Path, content: dict) -> None:
    """Write a JSON report atomically: a reader sees the old file or the whole new one."""
    tmp = dst.parent / f".{dst.name}.tmp-{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, dst)


def ensure_space(directory: Path, nbytes: int, what: str) -> None:
    """Refuse, before writing, what would not fit on the disk of `directory` (a failed write
    deep in a library leaves a half-written file and a screenful of tracebacks)."""
    probe = Path(directory)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = int(nbytes * 1.05) + (1 << 20)
    if need > free:
        raise UserError(
            f"{directory}: no space left on device for {what} (about {need / 1e6:.1f} MB "
            f"needed, {free / 1e6:.1f} MB free)"
        )


def file_mode() -> int:
    """The permissions a new file gets under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def default_permissions(directory: Path) -> None:
    """Give every file under `directory` the umask's permissions (some writers, such as
    safetensors, create theirs 0600)."""
    mode = file_mode()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


# A run's output directory: kept on --overwrite (the cached tiny base model).
KEEP_ON_OVERWRITE = ("base",)


def has_checkpoint(out: Path) -> bool:
    """Whether a run directory holds a finished checkpoint to resume (either backend's;
    Orbax's unfinished ones are `*.orbax-checkpoint-tmp*`)."""
    found = out / "checkpoints"
    return found.is_dir() and any("tmp" not in p.name for p in found.iterdir() if p.is_dir())


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
