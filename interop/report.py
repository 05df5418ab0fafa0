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
