"""Which items of which tensors each pruning rule ranks, and how many it keeps.

A `Unit` is ranked on its own: one tensor's entries (`unstructured`), the entries of all
of a group's tensors together (`global`), or the neurons / KV groups of one FFN or
attention block (`rows` / `heads`, from `structure`). Modules are chosen as DeepSpeed
chose them: a regex *searched* in each Hugging Face module name (the tensor name without
`.weight` / `.bias`); `excluded_modules` win over `modules`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from interop.errors import UserError
from interop.prune_config import PruneConfig, PruneGroup, PruneRule, n_of_m
from interop.pruning.structure import Block, Member, blocks, input_axis, linear_weights


@dataclass(frozen=True)
class Unit:
    key: str  # a tensor, a group's name, or a block's module
    rule: int  # index into the config's rules
    group: PruneGroup
    items: int
    members: tuple[Member, ...]  # where the items lie (structured) or the tensors (entries)
    ranked: tuple[str, ...]  # the tensors whose entries score the items
    structured: bool
    heads_per_item: int = 1
    n_m: tuple[int, int, int] | None = None  # N:M: (N, M, the tensor's input axis)

    def keep_count(self, sparsity: float) -> int:
        """Items kept at `sparsity`: DeepSpeed's ceil(dense_ratio * n) over entries,
        neurons or query heads, computed so that float noise in 1 - dense_ratio never
        moves it by one; KV groups are kept whole (rounding up between cuts)."""
        total = self.items * self.heads_per_item
        kept = total - math.floor(sparsity * total + 1e-6)
        return -(-kept // self.heads_per_item)


def module_of(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _search(patterns: list[str], name: str) -> bool:
    return any(re.search(p, module_of(name)) for p in patterns)


def plan(cfg: PruneConfig, hf_config: Mapping, shapes: Mapping[str, tuple]) -> list[Unit]:
    """Every rule's units; UserError names a rule whose module regexes match nothing."""
    units: list[Unit] = []
    for index, rule in enumerate(cfg.rules):
        for group in rule.resolved_groups():
            found = _units(index, rule, group, hf_config, shapes)
            if not found:
                raise UserError(
                    f"prune.rules[{index}] ({rule.pattern}), group {group.name}: modules "
                    f"{group.modules} match no prunable module "
                    f"(excluded: {rule.excluded_modules})"
                )
            units += found
    _check_overlap(units)
    return units


def _units(
    index: int, rule: PruneRule, group: PruneGroup, hf_config: Mapping, shapes: Mapping
) -> list[Unit]:
    def chosen(name: str) -> bool:
        return _search(group.modules, name) and not _search(rule.excluded_modules, name)

    n_m = n_of_m(rule.pattern)
    if n_m is not None:
        return [
            Unit(
                n,
                index,
                group,
                math.prod(shapes[n]),
                (Member(n, 0),),
                (n,),
                False,
                n_m=_n_m(index, rule.pattern, n, shapes[n], n_m, hf_config),
            )
            for n in linear_weights(hf_config, shapes)
            if chosen(n)
        ]
    if rule.pattern in ("unstructured", "global"):
        names = [n for n in linear_weights(hf_config, shapes) if chosen(n)]
        if rule.pattern == "global" and names:
            size = sum(math.prod(shapes[n]) for n in names)
            members = tuple(Member(n, 0) for n in names)
            return [Unit(group.name, index, group, size, members, tuple(names), False)]
        return [
            Unit(n, index, group, math.prod(shapes[n]), (Member(n, 0),), (n,), False) for n in names
        ]
    kind = rule.pattern
    units = []
    for block in blocks(hf_config, shapes):
        if block.kind != kind:
            continue
        ranked = tuple(
            m.name for m in block.members if m.name.endswith(".weight") and chosen(m.name)
        )
        if not ranked:
            continue
        _check_related(index, group, block)
        if kind == "heads":
            _check_heads(index, rule, group, block, hf_config)
        units.append(
            Unit(
                block.module,
                index,
                group,
                block.items,
                block.members,
                ranked,
                True,
                block.heads_per_item,
            )
        )
    return units


def _n_m(
    index: int, pattern: str, name: str, shape: tuple, n_m: tuple[int, int], hf_config: Mapping
) -> tuple[int, int, int]:
    """(N, M, input axis) of one tensor; its inputs must come in whole groups of M."""
    axis = input_axis(hf_config, name)
    if shape[axis] % n_m[1]:
        raise UserError(
            f"prune.rules[{index}] ({pattern}): {name} has {shape[axis]} inputs, not a "
            f"multiple of {n_m[1]}; exclude it (excluded_modules) or choose another M"
        )
    return (*n_m, axis)


def _check_related(index: int, group: PruneGroup, block: Block) -> None:
    """DeepSpeed's related_modules must lie in the same blocks: we cut whole blocks."""
    for pattern in group.related_modules:
        if not any(re.search(pattern, module_of(m.name)) for m in block.members):
            raise UserError(
                f"prune.rules[{index}], group {group.name}: related_modules {pattern!r} "
                f"names no module of {block.module} (its modules: "
                f"{', '.join(sorted({module_of(m.name) for m in block.members}))})"
            )


def _check_heads(
    index: int, rule: PruneRule, group: PruneGroup, block: Block, hf_config: Mapping
) -> None:
    heads = block.items * block.heads_per_item
    if rule.num_heads is not None and rule.num_heads != heads:
        raise UserError(
            f"prune.rules[{index}].num_heads: {rule.num_heads}, but the model has {heads} "
            "attention heads"
        )
    kept = heads - math.floor(group.sparsity * heads + 1e-6)
    if kept % block.heads_per_item or kept == 0:
        raise UserError(
            f"prune.rules[{index}], group {group.name}: sparsity {group.sparsity:g} keeps "
            f"{kept} of {heads} query heads, but with {block.items} KV heads they go in "
            f"groups of {block.heads_per_item}: keep a non-zero multiple of "
            f"{block.heads_per_item}"
        )


def _check_overlap(units: list[Unit]) -> None:
    """Two rules of the same pattern on one tensor would fight over its mask."""
    seen: dict[tuple[bool, str], int] = {}
    for unit in units:
        for name in unit.ranked if not unit.structured else (unit.key,):
            key = (unit.structured and unit.items > 0, name)
            if key in seen and seen[key] != id(unit):
                raise UserError(
                    f"prune: {name} is chosen by two groups (prune.rules[{unit.rule}], "
                    f"group {unit.group.name}); each module may belong to one group"
                )
            seen[key] = id(unit)
