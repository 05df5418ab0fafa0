"""Running the other framework, or more processes, from a command: free ports, the
PyTorch side's logits, and a child process whose failure is reported as its own."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from interop.errors import BackendError

STDERR_TAIL = 3000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_cpu_devices(xla_flags: str, count: int) -> str:
    """`xla_flags` (an XLA_FLAGS value) asking for `count` virtual CPU devices instead of
    any number it asked for; the other flags are kept."""
    flag = "--xla_force_host_platform_device_count"
    kept = [f for f in xla_flags.split() if not f.startswith(flag)]
    return " ".join([*kept, f"{flag}={count}"])


def torch_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def torch_logits(path: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
    """fp32 logits of the `transformers` model in `path`, computed by `torch-ref logits`
    in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        batch_file, out_file = Path(tmp) / "batch.npz", Path(tmp) / "logits.npy"
        np.savez(batch_file, **batch)
        cmd = [sys.executable, "-m", "torch_ref.cli", "logits", str(path)]
        cmd += ["--batch", str(batch_file), "--out", str(out_file)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise BackendError(f"the PyTorch side failed (exit {proc.returncode}):\n{tail}")
        return np.load(out_file)


def run_side(name: str, argv: list[str], env: dict, log: Path) -> None:
    """Run one side of a comparison, its output kept in `log`; a failure is that side's,
    reported with its stderr tail."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    side_ended(name, proc.returncode, proc.stdout, proc.stderr, log)


def side_ended(name: str, status: int, stdout: str, stderr: str, log: Path) -> None:
    """Keep a side's output in `log`; a nonzero exit status is that side's failure,
    reported with its stderr tail."""
    log.write_text(stdout + "\n--- stderr ---\n" + stderr)
    if status != 0:
        tail = stderr[-STDERR_TAIL:].rstrip()
        raise BackendError(
            f"the {name} side failed (exit {status}), so nothing was compared; "
            f"full log in {log}; its stderr ends:\n{tail}"
        )
