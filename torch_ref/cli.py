"""`torch-ref` entry point: the PyTorch side of commands that need both frameworks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from interop.errors import UserError


def _logits(args: argparse.Namespace) -> int:
    import numpy as np

    from torch_ref.logits import hf_logits

    batch = dict(np.load(args.batch))
    np.save(args.out, hf_logits(Path(args.model), batch))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torch-ref", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("logits", help="fp32 logits of an HF model on a saved batch")
    p.add_argument("model", help="Hugging Face model directory")
    p.add_argument("--batch", required=True, help=".npz with input_ids, attention_mask, positions")
    p.add_argument("--out", required=True, help=".npy file for the logits")
    p.set_defaults(run=_logits)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as err:
        print(f"torch-ref: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
