"""What every config section shares: unknown keys are errors, regexes are checked early."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every section: unknown keys are errors, fields may be given by alias."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)


def check_regexes(patterns: list[str]) -> list[str]:
    """`patterns`, each checked to compile (a field validator's body)."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    return patterns
