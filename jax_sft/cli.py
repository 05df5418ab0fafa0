"""`jax-sft` entry point: dispatch to a subcommand; user errors exit 2 with one line."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# The JAX side uses transformers for tokenizers only; its "PyTorch was not found" advice is noise.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from interop.boundary import run_command
from interop.errors import UserError
from jax_sft.huge_pages import reexec_with_huge_pages

# Modules of jax_sft.commands, imported when the parser is built: the program re-executes
# itself (`run`) before anything imports JAX.
COMMANDS = (
    "train",
    "dschat_step1",
    "eval",
    "convert",
    "compare",
    "config",
    "bench",
    "launch",
    "parity",
    "prune",
    "generate",
    "compare_answers",
    "chat",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is a one-line message and exit status 2 like other user errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jax-sft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"jax_sft.commands.{name}").add_parser(sub)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line's namespace; a bad command or flag is a UserError."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_foreign_flags", False):
        args.foreign_flags = extra  # e.g. DeepSpeed-Chat's flags, parsed by the command
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    inner = [a for a in extra if a != "--"]
    if getattr(args, "runs_a_command", False) and inner:  # `launch`: checked once, here
        parse(inner)
    return args


def main(argv: list[str] | None = None) -> int:
    def command() -> int:
        args = parse(argv)
        return args.run(args) or 0

    return run_command("jax-sft", command)


def run() -> None:
    """The `jax-sft` program: `main` on the command line, in a process whose glibc backs
    XLA's large buffers with huge pages (`jax_sft.huge_pages`)."""
    reexec_with_huge_pages()
    sys.exit(main())


if __name__ == "__main__":
    run()
