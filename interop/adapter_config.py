"""The `sparse` and `lora` sections of a run config: the two ways to train a small set of
new numbers over a frozen base.

`sparse`: the deltas of chosen entries of chosen weights (index + value) train, the rest
of the base is frozen; the section picks the weights, the budget and how entries are
chosen (statically, or moved during training by `spiel`). `lora`: low-rank factors beside
the chosen linear layers, with peft's semantics. The two do not combine (`RunConfig`
checks that, as it sees both).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from interop.schema import Section, check_regexes

# What `sparse=True` (initialize) selects with: the best of the static methods at small
# budgets in docs/sparse-study.md.
DEFAULT_SPARSE_METHOD = "fisher"
# Attention and MLP projections of the Llama/Qwen2, OPT and GPT-2 families (our names).
DEFAULT_SPARSE_TARGET = [
    r"(.*\.)?(q_proj|k_proj|v_proj|o_proj|out_proj|gate_proj|up_proj|down_proj"
    r"|fc1|fc2|c_attn|c_proj|c_fc)\.kernel"
]


class SparseConfig(Section):
    """Sparse fine-tuning: which entries of which weights train, and how they are chosen.

    The budget is one of `density` (fraction of each targeted weight), `num_tunable`
    (total entries) or `match_lora_rank` (as many entries as a LoRA of that rank).
    """

    method: Literal["none", "random", "magnitude", "fisher", "lt-sft", "bitfit", "spiel"] = "none"
    density: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    num_tunable: PositiveInt | None = None
    match_lora_rank: PositiveInt | None = None
    target: list[str] = Field(default_factory=lambda: list(DEFAULT_SPARSE_TARGET))
    dense_trainable: list[str] = []
    allocation: Literal["proportional", "global"] = "proportional"
    reselect_every: PositiveInt = 20
    accumulate_steps: PositiveInt = 5
    drop_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    fisher_samples: PositiveInt = 64
    dense_steps: NonNegativeInt = 100
    regularization: Literal["none", "l1", "l2"] = "none"
    reg_weight: NonNegativeFloat = 0.0

    _regexes = field_validator("target", "dense_trainable")(check_regexes)

    @model_validator(mode="after")
    def _one_budget(self) -> SparseConfig:
        budgets = ("density", "num_tunable", "match_lora_rank")
        given = [f"sparse.{name}" for name in budgets if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"set at most one of {', '.join(given)}")
        return self


class LoraConfig(Section):
    """LoRA adapters with peft's semantics and file format; rank 0 turns LoRA off.

    Each targeted linear weight W trains as W + (alpha / rank) * B @ A, with A [rank, in]
    (kaiming-uniform, like peft) and B [out, rank] (zeros), while W stays frozen.
    `target_modules` selects layers by their Hugging Face module name exactly as peft does:
    a list entry matches a name equal to it or ending in "." + entry ("q_proj" matches
    "model.layers.0.self_attn.q_proj"); a string is a regex the whole name must match;
    "all-linear" is every linear layer but the output head. Only linear layers (GPT-2's
    Conv1D included) take LoRA. `dense_trainable`: regexes over our dotted parameter paths
    of leaves trained whole beside the adapters (DeepSpeed-Chat without
    `--only_optimize_lora` trains everything: [".*"]); targeted kernels always stay frozen.
    `learning_rate`: the adapters' own peak learning rate (None: optim.learning_rate),
    following the same schedule. `dropout` is recorded in the adapter file; the JAX backend
    merges the factors into the weights and refuses dropout > 0. LoRA cannot be combined
    with sparse fine-tuning (sparse.method must be none).
    """

    rank: NonNegativeInt = 0
    alpha: PositiveFloat = 16.0
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    target_modules: list[str] | str = ["q_proj", "v_proj"]
    dense_trainable: list[str] = []
    learning_rate: NonNegativeFloat | None = None

    _regexes = field_validator("dense_trainable")(check_regexes)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, target: list[str] | str) -> list[str] | str:
        if isinstance(target, str):
            check_regexes([target])
        elif not target:
            raise ValueError("name at least one module (or give a regex string)")
        return target
