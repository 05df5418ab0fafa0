"""The `prune` section of a run config: which weights lose which entries, when and how.

A pruning run trains the whole model while some entries of chosen weights are held at
exactly zero. Each `PruneRule` is one technique (DeepSpeed's `sparse_pruning`,
`row_pruning` or `head_pruning` become one rule each):

- `method`: how entries are ranked: `magnitude` (largest |W| stays, DeepSpeed's `l1`),
  `random` (seeded), `movement` (Sanh et al. 2020: importance accumulates -grad * W over
  the steps before each cut), `topk` (DeepSpeed's learned scores: every step keeps the
  items with the top scores, which train with the weights through a straight-through
  estimator, so a pruned entry can come back; its ratio holds from `start_step` on),
  `wanda` / `sparsegpt` (one cut before training from the activations of
  `calibration_samples` sequences of the run's train data; SparseGPT also repairs the
  weights it keeps).
- `pattern`: what one ranked item is: `unstructured` (an entry, ranked within its
  tensor), `global` (an entry, ranked across all tensors of a group), `rows` (an FFN
  neuron: a row of the up/gate projections with the matching column of the down
  projection) or `heads` (an attention head: its query/key/value rows and output
  columns; with grouped-query attention a whole KV group, so the model stays valid),
  or `N:M` (`2:4`, `4:8`: of every M consecutive inputs of each output row, the N best
  stay: the semi-structured sparsity GPU tensor cores run at up to twice the speed; the
  sparsity is then 1 - N/M, and the input dimension must divide by M).
- schedule: one cut at `start_step` (dense before it) or, with `end_step`, a gradual
  one from `start_step` to `end_step` every `every` steps on the cubic schedule of Zhu &
  Gupta (2017); masks only ever lose entries.
- targets: `groups`, each with its own `sparsity` and `modules` (regexes searched in the
  Hugging Face module names, as DeepSpeed's `different_groups` do); `excluded_modules`
  are never pruned. Without groups, the rule's own `modules` and `sparsity` make one.

`regularization` (`l1`: a proximal soft-threshold step on the targeted weights;
`group_lasso`: the same on the L2 norms of the targeted rows or heads) acts after every
optimizer step until the last cut, driving weights to zero before they are cut.

`distill: squarehead` adds per-layer distillation from the dense model the run starts
from (Kurtic et al. 2023; `interop.pruning.distill` defines it) to the loss, weighted by
`distill_weight`: the pruned model is taught to keep the dense model's hidden states.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

from interop.schema import Section, check_regexes

Sparsity = Annotated[float, Field(ge=0.0, lt=1.0)]
PATTERNS = ("unstructured", "global", "rows", "heads")
CALIBRATED = ("wanda", "sparsegpt")  # methods that rank by the activations of calibration data
N_M = re.compile(r"^(\d+):(\d+)$")


def n_of_m(pattern: str) -> tuple[int, int] | None:
    """(N, M) of an `N:M` pattern; None for the others."""
    match = N_M.match(pattern)
    return (int(match[1]), int(match[2])) if match else None


RULE_KEYS = (
    "method",
    "pattern",
    "sparsity",
    "modules",
    "excluded_modules",
    "groups",
    "start_step",
    "end_step",
    "every",
)


class PruneGroup(Section):
    """Modules pruned to one sparsity (DeepSpeed's `different_groups` entry).
    `related_modules` (DeepSpeed's) must name modules of the same structures: the whole
    FFN or attention block is always cut together."""

    name: str = "group"
    modules: list[str]
    sparsity: Sparsity
    related_modules: list[str] = []

    _check = field_validator("modules", "related_modules")(check_regexes)


class PruneRule(Section):
    """One pruning technique (see the module docstring)."""

    method: Literal["magnitude", "random", "movement", "topk", "wanda", "sparsegpt"] = "magnitude"
    pattern: str = "unstructured"
    sparsity: Sparsity = 0.5
    modules: list[str] | None = None  # None: every module the pattern can cut
    excluded_modules: list[str] = []
    groups: list[PruneGroup] = []
    start_step: NonNegativeInt = 0
    end_step: NonNegativeInt | None = None
    every: PositiveInt = 1
    num_heads: PositiveInt | None = None  # DeepSpeed's head_pruning: checked against the model

    _check = field_validator("modules", "excluded_modules")(
        lambda v: v if v is None else check_regexes(v)
    )

    @field_validator("pattern", mode="before")
    @classmethod
    def _pattern(cls, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f'got the number {value}: quote an N:M pattern in YAML (pattern: "2:4"); '
                "unquoted, YAML reads 2:4 as sexagesimal 124"
            )
        if value in PATTERNS or not isinstance(value, str):
            return value
        n_m = n_of_m(value)
        if n_m is None:
            raise ValueError(f"must be one of {', '.join(PATTERNS)} or N:M (e.g. 2:4)")
        if not 0 < n_m[0] < n_m[1]:
            raise ValueError("N:M keeps N of every M inputs: 0 < N < M")
        return value

    @model_validator(mode="after")
    def _schedule(self) -> PruneRule:
        n_m = n_of_m(self.pattern)
        if n_m is not None:
            implied = 1.0 - n_m[0] / n_m[1]
            if "sparsity" in self.model_fields_set and abs(self.sparsity - implied) > 1e-9:
                raise ValueError(
                    f"pattern {self.pattern} means sparsity {implied:g}; leave sparsity out"
                )
            if self.groups or self.method == "topk" or self.end_step is not None:
                raise ValueError(
                    f"pattern {self.pattern}: one cut (no end_step) by magnitude, random, "
                    "movement, wanda or sparsegpt, without groups"
                )
            self.sparsity = implied
        if self.end_step is not None and self.end_step <= self.start_step:
            raise ValueError(
                f"end_step {self.end_step} must come after start_step {self.start_step} "
                "(leave it out for one cut)"
            )
        if self.method == "topk" and self.end_step is not None:
            raise ValueError(
                "method topk keeps its ratio from start_step on (DeepSpeed's "
                "schedule_offset); end_step is for magnitude, random and movement"
            )
        if self.method == "movement" and self.start_step == 0:
            raise ValueError(
                "method movement ranks by -grad x W accumulated over the steps before a cut: "
                "start_step must be at least 1"
            )
        if self.method == "topk" and self.pattern == "global":
            raise ValueError("method topk ranks within each tensor or structure, not global")
        if self.method in CALIBRATED:
            if self.pattern != "unstructured" and n_m is None:
                raise ValueError(
                    f"method {self.method} prunes entries: pattern unstructured (each output "
                    f"row alike) or N:M, not {self.pattern}"
                )
            if self.start_step != 0 or self.end_step is not None or self.groups:
                raise ValueError(
                    f"method {self.method} cuts once, before training (start_step 0, no "
                    "end_step), to one sparsity (no groups)"
                )
        return self

    def resolved_groups(self) -> list[PruneGroup]:
        """The rule's groups; without any, one from its own `modules` and `sparsity`."""
        if self.groups:
            return list(self.groups)
        return [PruneGroup(name=self.pattern, modules=self.modules or [""], sparsity=self.sparsity)]

    def cut_steps(self) -> list[int]:
        """The optimizer steps done when masks are (re)computed, before the next step."""
        if self.end_step is None:
            return [self.start_step]
        steps = list(range(self.start_step, self.end_step, self.every))
        return [*steps, self.end_step]

    def sparsity_at(self, step: int, target: float) -> float:
        """The sparsity a group with final `target` has after the cut at `step` (cubic
        schedule from 0 at `start_step` to `target` at `end_step`)."""
        if self.end_step is None or step >= self.end_step:
            return target if step >= self.start_step else 0.0
        if step < self.start_step:
            return 0.0
        done = (step - self.start_step) / (self.end_step - self.start_step)
        return target * (1.0 - (1.0 - done) ** 3)


class PruneConfig(Section):
    """Pruning rules and the regularization that prepares them; the rule fields may be
    given at the top level for a single rule (`prune.method`, `prune.sparsity`, ...)."""

    rules: list[PruneRule] = []
    regularization: Literal["none", "l1", "group_lasso"] = "none"
    reg_weight: NonNegativeFloat = 0.0
    seed: NonNegativeInt = 0
    distill: Literal["none", "squarehead"] = "none"
    distill_weight: NonNegativeFloat = 1.0
    calibration_samples: PositiveInt = 128  # sequences of the run's train data (wanda, sparsegpt)

    @model_validator(mode="before")
    @classmethod
    def _one_rule_at_top(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        top = {k: data[k] for k in RULE_KEYS + ("num_heads",) if k in data}
        if not top:
            return data
        if data.get("rules"):
            raise ValueError(f"give prune.{next(iter(top))} inside prune.rules, or no rules")
        rest = {k: v for k, v in data.items() if k not in top}
        return {**rest, "rules": [top]}

    @model_validator(mode="after")
    def _distill_needs_rules(self) -> PruneConfig:
        if self.distill != "none" and not self.rules:
            raise ValueError("prune.distill distils into a pruned model: give a pruning rule")
        calibrated = [r.method for r in self.rules if r.method in CALIBRATED]
        if calibrated and len(self.rules) > 1:
            raise ValueError(f"method {calibrated[0]} must be the run's only pruning rule")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    def last_cut(self) -> int:
        """The step of the final cut of every rule (regularization stops there)."""
        return max(max(rule.cut_steps()) for rule in self.rules)
