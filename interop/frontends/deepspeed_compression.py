"""DeepSpeed's `compression_training` block of a ds_config.json, read as `prune` rules.

DeepSpeed pruned during training from this block until 0.19 removed its compression
library (0.19 rejects the block). Each pruning technique with `shared_parameters.enabled`
true becomes one `PruneRule` (see `interop.prune_config`):

    compression_training.<technique>          prune.rules[i]
      sparse_pruning / row_pruning / head_pruning
                                                pattern unstructured / rows / heads
      shared_parameters.method: l1 / topk       method: magnitude / topk (learned scores)
      shared_parameters.schedule_offset         start_step (default 0)
      shared_parameters.schedule_offset_end     end_step when after schedule_offset
                                                (gradual, on the cubic schedule); else
                                                one cut at schedule_offset
      shared_parameters.schedule_offset_stride  every (default 1)
      shared_parameters.excluded_modules        excluded_modules
      shared_parameters.num_heads (heads)       num_heads (checked against the model)
      shared_parameters.dense_ratio             the ratio of groups that give none
      different_groups.<name>                   groups[j], named <name>
        params.dense_ratio r (default 0.5)        sparsity 1 - r; r must be in (0, 1]
        modules (default: all)                    modules, regexes searched in HF names
        related_modules [[...], ...]              related_modules, flattened

With no `different_groups`, the shared `dense_ratio` makes one group of every prunable
module. A ratio r keeps ceil(r * n) of n entries, neurons or heads, as DeepSpeed did.

Where DeepSpeed's last code and its docs disagree, the docs win: `schedule_offset`
defaults to 0 (code: 1000), a group's `dense_ratio` to 0.5 (code: required) and its
`modules` to every module (code: "*", which is no regex). DeepSpeed's head pruning knew
only `topk` (its default here too); `l1` here ranks heads by magnitude, as rows are
ranked. `topk` keeps its ratio from `schedule_offset` on, so with it a
`schedule_offset_end` after the offset is refused. The docs list
`schedule_offset_end`, `schedule_offset_stride`, `dense_ratio` and `excluded_modules`
for sparse pruning only; they mean the same for rows and heads here.

Refused by name (a UserError, exit 2): the method `snip_momentum`, `block_pattern`, the
enabled techniques this project lacks (`channel_pruning`, `weight_quantization`,
`activation_quantization`, `layer_reduction`) and any key the docs do not list. A
technique that is not enabled adds nothing and leaves a note; the names of its keys are
still checked, so a misspelt `enabled` is not read as false.
"""

from __future__ import annotations

import re
from typing import Any

from interop.errors import UserError

ROOT = "compression_training"
PATTERNS = {"sparse_pruning": "unstructured", "row_pruning": "rows", "head_pruning": "heads"}
NOT_HERE = {
    "channel_pruning": "it prunes the channels of conv layers",
    "weight_quantization": "quantization-aware training",
    "activation_quantization": "quantization-aware training",
    "layer_reduction": "it needs a teacher model for distillation",
}
METHODS = {"l1": "magnitude", "topk": "topk"}
NOT_IMPLEMENTED_METHODS = ("snip_momentum",)
GROUP_DENSE_RATIO = 0.5  # the docs' default for a group without params.dense_ratio
_SHARED = (
    "enabled",
    "method",
    "schedule_offset",
    "schedule_offset_end",
    "schedule_offset_stride",
    "dense_ratio",
    "excluded_modules",
    "block_pattern",
)
_GROUP = ("params", "modules", "related_modules")


class _Reader:
    """Notes and errors for one file; keys are dotted paths below `compression_training`."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.notes: list[str] = []

    def error(self, key: str, text: str) -> UserError:
        """`text` follows the key: "must be ..." or ": topk is ..."."""
        where = f"{ROOT}.{key}" if key else ROOT
        return UserError(f"{self.file}: {where}{'' if text.startswith(':') else ' '}{text}")

    def note(self, key: str, text: str) -> None:
        self.notes.append(f"{self.file}: {ROOT}.{key} {text}")

    def object(self, key: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a JSON object, got {value!r}")
        return value

    def section(self, key: str, value: Any, known: tuple[str, ...]) -> dict:
        """`value` checked to be a JSON object whose keys are all in `known`."""
        for name in self.object(key, value):
            if name not in known:
                inside = f"{key}.{name}" if key else name
                raise self.error(inside, f"is not a DeepSpeed key here (known: {', '.join(known)})")
        return value

    def integer(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def ratio(self, key: str, value: Any) -> float:
        """A dense_ratio: the fraction kept, in (0, 1]."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise self.error(key, f"must be in (0, 1], got {value!r}")
        return value

    def strings(self, key: str, value: Any) -> list[str]:
        """A list of module-name regexes (a bad one is named here, under its DeepSpeed key)."""
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"must be a list of module name regexes, got {value!r}")
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self.error(key, f": invalid regex {pattern!r} ({exc})") from None
        return value

    def enabled(self, key: str, section: dict) -> bool:
        flag = section.get("enabled", False)
        if not isinstance(flag, bool):
            raise self.error(f"{key}.enabled", f"must be true or false, got {flag!r}")
        return flag


def prune_rules(file: str, block: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The `prune.rules` (as dicts; empty when no technique is enabled) and the notes for
    the `compression_training` block of the DeepSpeed config named `file`."""
    r = _Reader(file)
    known = (*PATTERNS, *NOT_HERE)
    rules = []
    for technique, section in r.section("", block, known).items():
        if technique in NOT_HERE:
            _not_here(r, technique, section)
            continue
        rule = _rule(r, technique, section)
        if rule is not None:
            rules.append(rule)
    return rules, r.notes


def _not_here(r: _Reader, technique: str, section: Any) -> None:
    """Refuse an enabled technique that this project does not implement."""
    r.object(technique, section)
    if technique == "layer_reduction":
        flag = r.enabled(technique, section)
    else:
        where = f"{technique}.shared_parameters"
        flag = r.enabled(where, r.object(where, section.get("shared_parameters", {})))
    if flag:
        raise r.error(technique, f"is not implemented here ({NOT_HERE[technique]})")
    r.note(technique, "is not enabled; ignored")


def _rule(r: _Reader, technique: str, section: Any) -> dict[str, Any] | None:
    """One technique's rule, or None (with a note) when it is not enabled."""
    r.section(technique, section, ("shared_parameters", "different_groups"))
    key = f"{technique}.shared_parameters"
    known = (*_SHARED, "num_heads") if technique == "head_pruning" else _SHARED
    shared = r.section(key, section.get("shared_parameters", {}), known)
    groups = r.object(f"{technique}.different_groups", section.get("different_groups", {}))
    for name, group in groups.items():
        where = f"{technique}.different_groups.{name}"
        r.section(
            f"{where}.params", r.section(where, group, _GROUP).get("params", {}), ("dense_ratio",)
        )
    if not r.enabled(key, shared):
        r.note(technique, "is not enabled (shared_parameters.enabled); it adds no pruning rule")
        return None
    method = shared.get("method", "topk" if technique == "head_pruning" else "l1")
    if method in NOT_IMPLEMENTED_METHODS:
        raise r.error(f"{key}.method", f": {method} is not implemented here (l1 and topk are)")
    if method not in METHODS:
        known = ", ".join([*METHODS, *NOT_IMPLEMENTED_METHODS])
        raise r.error(f"{key}.method", f": {method!r} is not one of {known}")
    if "block_pattern" in shared:
        raise r.error(
            f"{key}.block_pattern", f": {shared['block_pattern']!r} is not implemented here"
        )
    rule: dict[str, Any] = {"method": METHODS[method], "pattern": PATTERNS[technique]}
    rule.update(_schedule(r, key, shared))
    if method == "topk" and "end_step" in rule:
        raise r.error(
            f"{key}.schedule_offset_end",
            f": {rule['end_step']}, but topk keeps dense_ratio from schedule_offset on "
            "(a gradual schedule is for l1)",
        )
    if "excluded_modules" in shared:
        rule["excluded_modules"] = r.strings(f"{key}.excluded_modules", shared["excluded_modules"])
    if technique == "head_pruning":
        if "num_heads" not in shared:
            raise r.error(f"{key}.num_heads", "is missing (DeepSpeed requires it for head_pruning)")
        rule["num_heads"] = r.integer(f"{key}.num_heads", shared["num_heads"], 1)
    default = (
        r.ratio(f"{key}.dense_ratio", shared["dense_ratio"]) if "dense_ratio" in shared else None
    )
    if groups:
        where = f"{technique}.different_groups"
        rule["groups"] = [_group(r, f"{where}.{n}", n, g, default) for n, g in groups.items()]
    elif default is not None:
        rule["groups"] = [{"name": technique, "modules": [""], "sparsity": 1.0 - default}]
    else:
        raise r.error(
            f"{technique}.different_groups",
            "is missing or empty and shared_parameters has no dense_ratio: nothing says what "
            "to prune",
        )
    return rule


def _schedule(r: _Reader, key: str, shared: dict) -> dict[str, int]:
    """start_step, every and (for a gradual schedule) end_step from the offsets."""
    start = r.integer(f"{key}.schedule_offset", shared.get("schedule_offset", 0), 0)
    every = r.integer(f"{key}.schedule_offset_stride", shared.get("schedule_offset_stride", 1), 1)
    out = {"start_step": start, "every": every}
    if "schedule_offset_end" in shared:
        end = r.integer(f"{key}.schedule_offset_end", shared["schedule_offset_end"], 0)
        if end > start:
            out["end_step"] = end
        else:
            r.note(
                f"{key}.schedule_offset_end",
                f"{end} is not after schedule_offset {start}: one cut at step {start}",
            )
    if "schedule_offset_stride" in shared and "end_step" not in out:
        r.note(
            f"{key}.schedule_offset_stride",
            "has no effect without a schedule_offset_end after schedule_offset (one cut)",
        )
    return out


def _group(r: _Reader, key: str, name: str, group: dict, default: float | None) -> dict[str, Any]:
    """One `different_groups` entry (its keys already checked) as a PruneGroup dict."""
    params = group.get("params", {})
    if "dense_ratio" in params:
        ratio = r.ratio(f"{key}.params.dense_ratio", params["dense_ratio"])
    else:
        ratio = GROUP_DENSE_RATIO if default is None else default
    modules = r.strings(f"{key}.modules", group["modules"]) if "modules" in group else [""]
    related = group.get("related_modules")
    related = [] if related is None else related
    if not isinstance(related, list):
        raise r.error(f"{key}.related_modules", f"must be a list of lists, got {related!r}")
    flat = [
        m
        for i, inner in enumerate(related)
        for m in r.strings(f"{key}.related_modules[{i}]", inner)
    ]
    return {"name": name, "modules": modules, "sparsity": 1.0 - ratio, "related_modules": flat}
