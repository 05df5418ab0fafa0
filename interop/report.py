"""How commands report figures: readable lines, and with `--json` one JSON object last."""

from __future__ import annotations

import json
import math
import sys


def _plain(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def emit(lines: list[str], summary: dict, as_json: bool) -> None:
    """Print the human lines; with as_json, the summary as the last stdout line."""
    for line in lines:
        print(line)
    if as_json:
        print(json.dumps({k: _plain(v) for k, v in summary.items()}))
    sys.stdout.flush()


def eval_printer(style: str):
    """How evaluations are shown: DeepSpeed-Chat's `ppl: .., loss: ..` or a labelled line."""

    def show(result: dict) -> None:
        if style == "dschat":
            print(f"ppl: {result['eval_ppl']}, loss: {result['eval_loss']}", flush=True)
        else:
            print(f"eval: loss {result['eval_loss']:.4f}  ppl {result['eval_ppl']:.3f}", flush=True)

    return show
