"""A run's output directory: nothing the user had is lost, one run at a time, and a
checkpoint is resumed only by the run it belongs to (both trainers).

- **Transactions.** A new run writes into a hidden sibling, `.NAME.partial`, and takes
  the directory's name only once it completed; until then an existing directory (with
  `--overwrite`: an old run, the user's files) is untouched, and a run that fails before
  its first checkpoint leaves nothing behind. A run killed after a checkpoint is resumed
  from the sibling by the next invocation. The tiny base model cached in `base/` is
  carried over by hard links.
- **In place.** A directory holding this run's checkpoint is resumed in place;
  DeepSpeed-Chat's `--output_dir` (its scripts create it and log into it first) is
  written in place too, and refused, naming them, if it holds files the run did not make.
- **One at a time.** The run holds an exclusive lock on `.NAME.lock` beside the directory
  (the kernel releases it even after kill -9; the file goes when the run ends); a second
  run is refused with the holder's pid.
- **Whose checkpoint.** `run.json` records what the run is (`identity`: backend, model
  files, training mode and the settings that shape its state and data); resuming
  compares it and names the first setting that differs. The learning rate, the schedule
  and the run's length may change between resumes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from interop.checkpoints.formats import detect_format
from interop.config import RunConfig, with_sections
from interop.errors import UserError
from interop.outputs import has_checkpoint
from interop.preflight import check_data_given

MARKER = "run.json"
NOT_IDENTITY = {"data.cache_dir"}  # where tokens are cached changes no token
BASE = "base"  # the cached tiny base model (`model.tiny`), kept across --overwrite
DSCHAT_OWN = ("training.log",)  # what DeepSpeed-Chat's scripts put there before the run


def model_identity(path: Path) -> str:
    """A cheap fingerprint of a model or adapter directory: its config and adapter files
    whole, each weight file's name, size and (safetensors) header of names, shapes and
    offsets."""
    digest = hashlib.sha256(detect_format(path).encode())
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        digest.update(f"|{rel}|{file.stat().st_size}|".encode())
        if file.suffix == ".json":
            digest.update(file.read_bytes())
        elif file.suffix == ".safetensors":
            with open(file, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                digest.update(f.read(min(size, 1 << 24)))
    return digest.hexdigest()


def identity(cfg: RunConfig, backend: str) -> dict[str, object]:
    """{setting: value} of what a checkpoint of this run depends on."""
    data = cfg.model_dump(mode="json")
    found: dict[str, object] = {"backend": backend, "training_mode": cfg.training_mode}
    model = dict(data["model"])
    for key in ("path", "base"):
        if model[key] is not None:
            model[key] = model_identity(Path(model[key]))
    mode = cfg.training_mode
    sections = {"model": model, "data": data["data"], mode: data.get(mode)}
    for section, values in sections.items():
        for key, value in (values or {}).items():
            if f"{section}.{key}" not in NOT_IDENTITY:
                found[f"{section}.{key}"] = value
    for key in ("micro_batch_size", "gradient_accumulation_steps", "seed"):
        found[f"train.{key}"] = data["train"][key]
    found["optim.grad_clip is set"] = cfg.optim.grad_clip is not None
    found["optim.weight_decay > 0"] = cfg.optim.weight_decay > 0
    return json.loads(json.dumps(found))


class RunDir:
    """Where one run writes (`work`) and what becomes of it (see the module docstring)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.stage = self.out.parent / f".{self.out.name}.partial"
        self.work = self.out
        self.created = False  # the run made `out` itself (in place)
        self.lock_path = self.out.parent / f".{self.out.name}.lock"
        self._made: list[Path] = []  # parents that did not exist
        self._lock = None

    def open(self, ident: dict, *, overwrite: bool, resume: bool, in_place: bool) -> Path:
        """Choose and prepare the working directory; returns it."""
        self._made = [p for p in self.out.parents if not p.exists()][::-1]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.lock()
        if not overwrite and has_checkpoint(self.out):
            self._check(self.out, ident)
            return self.out
        if not overwrite and not in_place and has_checkpoint(self.stage):
            self._check(self.stage, ident)
            self.work = self.stage
            return self.stage
        if resume:
            raise UserError(f"--resume: {self.out} holds no checkpoint")
        if in_place:
            ours = (self.out / MARKER).is_file()
            foreign = [p.name for p in _entries(self.out) if p.name not in DSCHAT_OWN]
            if foreign and not ours:
                names = sorted(foreign)
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if names[5:] else "")
                raise UserError(
                    f"--output_dir: {self.out} holds files this run did not make ({shown}); "
                    "give an empty or new directory"
                )
            self.created = not self.out.exists()
            self.out.mkdir(exist_ok=True)
            _write_marker(self.out, ident)
            return self.out
        if not overwrite and any(p.name != BASE for p in _entries(self.out)):
            raise UserError(
                f"train.output_dir: {self.out} exists and holds no checkpoint to resume; "
                "pass --overwrite to replace it (it stays until the new run completed)"
            )
        shutil.rmtree(self.stage, ignore_errors=True)
        self.stage.mkdir()
        if (self.out / BASE).is_dir():
            shutil.copytree(self.out / BASE, self.stage / BASE, copy_function=os.link)
        _write_marker(self.stage, ident)
        self.work = self.stage
        return self.stage

    def lock(self) -> None:
        """Hold the directory's lock for the life of the run (see the module docstring).
        The lock file goes when the run ends; a run that locked a file just unlinked by
        the one before it notices (another inode under the name) and locks anew."""
        while self._lock is None:
            handle = open(self.lock_path, "a+")  # noqa: SIM115 (held for the run's life)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise UserError(f"{self.out}: another run is using it (pid {holder})") from None
            try:
                current = os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(handle.fileno()).st_ino:
                handle.close()
                continue
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            self._lock = handle

    def _check(self, path: Path, ident: dict) -> None:
        marker = path / MARKER
        if not marker.is_file():  # a run directory from before markers: trust it
            _write_marker(path, ident)
            return
        theirs = json.loads(marker.read_text()).get("identity", {})
        differ = [k for k in sorted(set(theirs) | set(ident)) if theirs.get(k) != ident.get(k)]
        if differ:
            key = differ[0]
            raise UserError(
                f"train.output_dir: {path} holds a checkpoint of another run ({key}: "
                f"{_short(theirs.get(key))} there, {_short(ident.get(key))} here); pass "
                "--overwrite to start afresh (the old run stays until the new one completed)"
            )

    def commit(self) -> None:
        """The completed run takes the directory's name (replacing what was there)."""
        if self.work == self.stage:
            old = self.out.parent / f".{self.out.name}.old-{secrets.token_hex(4)}"
            if self.out.exists():
                self.out.rename(old)
            self.stage.rename(self.out)
            shutil.rmtree(old, ignore_errors=True)
            self.work = self.out

    def abandon(self) -> None:
        """After a failure, what the run made goes unless it holds a checkpoint."""
        if self.work == self.stage and not has_checkpoint(self.stage):
            shutil.rmtree(self.stage, ignore_errors=True)
        elif self.created and [p.name for p in _entries(self.out)] == [MARKER]:
            shutil.rmtree(self.out)

    def close(self) -> None:
        """Release the lock; what the run made only to hold it goes too."""
        if self._lock is not None:
            self.lock_path.unlink(missing_ok=True)
            self._lock.close()
            self._lock = None
        for made in reversed(self._made):
            if made.is_dir() and not any(made.iterdir()):
                made.rmdir()


@contextmanager
def run_directory(
    cfg: RunConfig,
    backend: str,
    *,
    is_main: bool,
    share: Callable[[int], int],
    barrier: Callable[[], None],
    overwrite: bool,
    resume: bool,
    in_place: bool = False,
) -> Iterator[RunConfig]:
    """The run's directory for the length of the block: yields `cfg` pointed at where the
    run writes. When the block completes, a staged run takes the directory's name; when
    it fails, what the run made without a checkpoint goes. Process 0 decides and holds
    the lock (`share` and `barrier` are the backend's collectives)."""
    check_data_given(cfg)
    rd = RunDir(Path(cfg.train.output_dir))
    try:
        options = dict(overwrite=overwrite, resume=resume, in_place=in_place)
        work = _open_shared(rd, identity(cfg, backend), is_main, share, options)
        try:
            yield with_sections(cfg, {"train": {"output_dir": str(work)}})
        except BaseException:
            if is_main:
                rd.abandon()
            raise
        if is_main:
            rd.commit()
        barrier()
    finally:
        rd.close()


def _open_shared(
    rd: RunDir, ident: dict, is_main: bool, share: Callable[[int], int], options: dict
) -> Path:
    """`rd.open` on process 0; every process learns the directory it chose."""
    code, error = 0, None
    if is_main:
        try:
            code = int(rd.open(ident, **options) == rd.stage)
        except UserError as err:
            code, error = -1, err
    code = share(code)
    if error is not None:
        raise error
    if code < 0:
        raise UserError(f"{rd.out}: refused by process 0 (its message says why)")
    rd.work = rd.stage if code else rd.out
    return rd.work


def _entries(path: Path) -> list[Path]:
    return list(path.iterdir()) if path.is_dir() else []


def _write_marker(path: Path, ident: dict) -> None:
    (path / MARKER).write_text(json.dumps({"identity": ident}, indent=1) + "\n")


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
