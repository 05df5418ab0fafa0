"""The `jax-sft` program re-executes itself with glibc's huge-page tunable where that
takes effect (`jax_sft.huge_pages`), and a large malloc'd block is then backed by huge
pages; the benchmark's PyTorch runs get the environment the user started with."""

import json
import os
import subprocess
import sys

import pytest

from jax_sft.huge_pages import (
    ADDED,
    TUNABLE,
    environ_as_started,
    glibc_version,
    huge_page_environ,
    thp_mode,
)

GLIBC = (2, 36)


@pytest.mark.parametrize(
    "start, tunables",
    [
        ({"PATH": "/bin"}, TUNABLE),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, f"glibc.malloc.arena_max=2:{TUNABLE}"),
    ],
)
def test_the_tunable_is_added_and_removed_again(start, tunables):
    env = huge_page_environ(start, "madvise", GLIBC)
    assert env["GLIBC_TUNABLES"] == tunables and env[ADDED] == "1"
    assert environ_as_started(env) == start


@pytest.mark.parametrize(
    "environ, mode, glibc",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", GLIBC),  # the user's opt-out
        ({}, "always", GLIBC),  # already huge
        ({}, "never", GLIBC),
        ({}, None, GLIBC),  # no THP file: not Linux
        ({}, "madvise", (2, 34)),  # glibc without the tunable
        ({}, "madvise", None),  # another C library
    ],
)
def test_no_reexec_where_the_tunable_would_change_nothing(environ, mode, glibc):
    assert huge_page_environ(environ, mode, glibc) is None


def test_a_tunable_the_user_set_is_kept_for_the_reference_runs():
    env = {"GLIBC_TUNABLES": TUNABLE}
    assert environ_as_started(env) == env


PROBE = """
import ctypes, json, os
from jax_sft.huge_pages import reexec_with_huge_pages
reexec_with_huge_pages()

def anon_huge_kib():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
before = anon_huge_kib()
block = libc.malloc(ctypes.c_size_t(size))
ctypes.memset(block, 1, size)
print(json.dumps({
    "tunables": os.environ.get("GLIBC_TUNABLES"),
    "huge_kib": anon_huge_kib() - before,
}))
"""


def probe(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", ADDED)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**env, **extra}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_program_reexecutes_and_large_blocks_get_huge_pages():
    default, opted_out = probe(), probe(GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
    assert opted_out["tunables"] == "glibc.malloc.hugetlb=0"
    if huge_page_environ({}, thp_mode(), glibc_version()) is None:
        assert default["tunables"] is None
    else:
        assert default["tunables"] == TUNABLE
        assert default["huge_kib"] >= 128 << 10  # most of the 256 MiB block
        assert opted_out["huge_kib"] < 16 << 10  # 4 KiB pages without the tunable


def test_the_command_line_module_imports_no_jax():
    code = "import sys, jax_sft.cli; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'jax'" not in out.stdout and "'jax_sft'" in out.stdout
