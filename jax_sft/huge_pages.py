"""Transparent huge pages for XLA's per-step buffers: why `jax-sft` re-executes itself once.

XLA's CPU runtime gives each run of a compiled step its temporaries as one buffer (about
0.8 GB for llama-10m at batch 8 x 512, 2.6 GB for llama-50m), taken with `malloc` and
freed when the step ends. glibc serves a block that large with a fresh `mmap` and returns
it with `munmap`, so every step the kernel faults the buffer in again one 4 KiB page at
a time, zeroing each page: hundreds of thousands of page faults a step, a sizeable share
of a CPU step (`docs/benchmarks.md`, "Huge pages for XLA's step buffers", has the figures).

With the glibc tunable `glibc.malloc.hugetlb=1` (glibc 2.35 and later) `malloc` advises
`MADV_HUGEPAGE` on such blocks; where the kernel's transparent huge pages are in their
common "madvise" mode, those blocks then fault in 2 MiB at a time, 512 times fewer faults.
glibc reads tunables once, when a process starts, so the `jax-sft` program adds the
tunable to its environment and re-executes itself before JAX is imported; processes it
starts inherit it. Nothing changes where THP is "always" (already huge) or "never", on
other C libraries, or where `GLIBC_TUNABLES` already names `glibc.malloc.hugetlb` (set it
to 0 to opt out). Code that imports `jax_sft` as a library is never re-executed.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
ADDED = "JAX_SFT_ADDED_HUGETLB"  # marks an environment whose tunable jax-sft added
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), if known."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return None
    return text.partition("[")[2].partition("]")[0] or None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return None
    major, _, minor = version.partition(".")
    return int(major), int(minor.partition(".")[0] or 0)


def huge_page_environ(
    environ: Mapping[str, str], mode: str | None, glibc: tuple[int, int] | None
) -> dict[str, str] | None:
    """`environ` with the huge-page tunable added, or None where it would change nothing."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if mode != "madvise" or glibc is None or glibc < (2, 35) or "glibc.malloc.hugetlb" in tunables:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    env[ADDED] = "1"
    return env


def environ_as_started(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without what `huge_page_environ` added: the environment the user started
    the program with (for the PyTorch runs the benchmark compares against)."""
    env = dict(environ)
    if env.pop(ADDED, None) is None:
        return env
    tunables = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t and t != TUNABLE]
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    return env


def reexec_with_huge_pages() -> None:
    """Re-execute this program (same interpreter, same arguments) with the tunable set,
    where it would take effect and is not set yet; otherwise return."""
    env = huge_page_environ(os.environ, thp_mode(), glibc_version())
    if env is not None and sys.executable:  # an embedded interpreter has no executable
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)
