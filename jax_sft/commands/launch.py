"""`jax-sft launch -n N [--cpu-devices D] -- COMMAND ...`: N local processes, one JAX run.

What torchrun is to `torch-ref train`: it picks a free coordinator port on 127.0.0.1,
starts N copies of `jax-sft COMMAND ...` with `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` set (and, with `--cpu-devices`, that many virtual
CPU devices each), waits for all of them and exits with the first failure's status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from interop.errors import UserError
from interop.processes import free_port, with_cpu_devices


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="run a jax-sft command as several local processes")
    p.add_argument("-n", "--num-processes", type=int, required=True)
    p.add_argument("--cpu-devices", type=int, help="virtual CPU devices per process")
    p.set_defaults(run=run, takes_foreign_flags=True, runs_a_command=True)


def run(args: argparse.Namespace) -> int:
    command = [a for a in args.foreign_flags if a != "--"]
    if not command:
        raise UserError("launch: give the command to run, e.g. jax-sft launch -n 2 -- train x.yaml")
    if args.num_processes < 1:
        raise UserError(f"--num-processes: {args.num_processes} is not a positive count")
    address = f"127.0.0.1:{free_port()}"
    procs = []
    for rank in range(args.num_processes):
        env = {
            **os.environ,
            "JAX_COORDINATOR_ADDRESS": address,
            "JAX_NUM_PROCESSES": str(args.num_processes),
            "JAX_PROCESS_ID": str(rank),
        }
        if args.cpu_devices:
            env["JAX_PLATFORMS"] = "cpu"
            env["XLA_FLAGS"] = with_cpu_devices(os.environ.get("XLA_FLAGS", ""), args.cpu_devices)
        procs.append(subprocess.Popen([sys.executable, "-m", "jax_sft.cli", *command], env=env))
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c != 0), 0)
