"""What every section of a DeepSpeed `ds_config.json` is read with: the file itself
(a repeated key is an error, as in DeepSpeed's loader) and the `Translation` that
collects the RunConfig overrides and notes, whose errors name the file and the key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from interop.errors import UserError

AUTO = "auto"  # Hugging Face Trainer style: "not given here", the YAML decides


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """JSON object hook: a repeated key is an error, as in DeepSpeed's own loader."""
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def read_json(path: Path) -> dict:
    """The JSON object in `path`; a missing file or bad JSON is a UserError with file:line."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except OSError as exc:
        raise UserError(f"{name}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    except ValueError as exc:
        raise UserError(f"{name}: invalid DeepSpeed config ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{name}: the top level must be a JSON object, not {type(data).__name__}")
    return data


class Translation:
    """The overrides and notes being built from one file; errors name that file."""

    def __init__(self, name: str, data_parallel_size: int) -> None:
        self.name = name
        self.dp = data_parallel_size
        self.out: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    def set(self, section: str, key: str, value: Any) -> None:
        self.out.setdefault(section, {})[key] = value

    def note(self, key: str, why: str) -> None:
        self.notes.append(f"{self.name}: {key} has no effect here ({why})")

    def error(self, key: str, message: str) -> UserError:
        return UserError(f"{self.name}: {key} {message}")

    def section(self, data: dict, key: str) -> dict:
        value = data[key]
        if not isinstance(value, dict):
            raise self.error(key, f"must be a JSON object, got {value!r}")
        return value

    def number(self, key: str, value: Any, *, integer: bool = False, minimum: float = 0) -> Any:
        """`value` checked to be a number (an int if `integer`) of at least `minimum`."""
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            kind = "an integer" if integer else "a number"
            raise self.error(key, f"must be {kind} >= {minimum:g}, got {value!r}")
        return value


def given(data: dict, key: str) -> bool:
    """Whether `data` sets `key` (to something other than null or "auto")."""
    return key in data and data[key] != AUTO and data[key] is not None


def extra(section: dict, handled: set[str]) -> list[str]:
    """The keys of `section` outside `handled`, in file order."""
    return [key for key in section if key not in handled]
