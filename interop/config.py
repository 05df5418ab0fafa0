"""The run-config schema that every front end fills and both backends read.

One YAML file (or a ds_config.json / DeepSpeed-Chat flags, translated elsewhere) becomes
one validated `RunConfig`. Every section forbids unknown keys, so a typo such as
`train.max_stepz` fails at load time with the file and the dotted key, instead of being
silently ignored. Reading files, merging layers and `--set a.b=value` overrides (merged
into the raw mapping before validation, so they obey exactly the same rules as the file)
is `interop.config_files`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from interop.adapter_config import LoraConfig, SparseConfig
from interop.prune_config import PruneConfig
from interop.schema import Section
from interop.tiny_configs import TINY_CONFIGS

DEFAULT_TINY = "tiny-llama"
Dtype = Literal["float32", "bfloat16", "float16"]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class PretrainConfig(Section):
    """For a `model.tiny` base: train a tokenizer and pretrain on a corpus first (cached).

    `corpus: pydoc` is the text of Python's own `pydoc_data.topics`, so the embedded demo
    needs no download; a path names a local text file. `steps: 0` skips pretraining.
    """

    corpus: str = "pydoc"
    steps: NonNegativeInt = 0
    vocab_size: Annotated[int, Field(ge=64)] = 512
    seq_len: Annotated[int, Field(ge=8)] = 128
    batch_size: PositiveInt = 16
    learning_rate: PositiveFloat = 3e-3


class ModelConfig(Section):
    """Which model to fine-tune: a local HF/Orbax directory or a named tiny config."""

    path: str | None = None
    tiny: str | None = None
    base: str | None = None  # with `path` a sparse adapter: its base (default: the adapter's)
    dtype: Dtype = "float32"
    param_dtype: Dtype = "float32"
    remat: bool = False
    # JAX: the decoder layers stored stacked and run as one scan over depth, so the train
    # step compiles one layer whatever the depth (full fine-tuning; no effect on PyTorch)
    scan_layers: bool = False
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_tiny(cls, data: Any) -> Any:
        """A section naming neither source gets the default tiny model, like a missing one."""
        if isinstance(data, dict) and "path" not in data and "tiny" not in data:
            return {**data, "tiny": DEFAULT_TINY}
        return data

    @field_validator("tiny")
    @classmethod
    def _known_tiny(cls, name: str | None) -> str | None:
        if name is not None and name not in TINY_CONFIGS:
            raise ValueError(f"unknown tiny model {name!r} (known: {', '.join(TINY_CONFIGS)})")
        return name

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.tiny is None):
            state = "both are set" if self.path is not None else "neither is set"
            raise ValueError(f"set exactly one of model.path and model.tiny ({state})")
        return self


class DataSource(Section):
    """One dataset file (JSON list or JSONL) and its sampling weight."""

    path: str
    format: Literal["auto", "prompt_chosen", "prompt_completion", "messages", "text"] = "auto"
    weight: PositiveFloat = 1.0
    split: bool = True  # False: all rows, whatever data.data_split says (DS-Chat sft-only data)


class DataConfig(Section):
    """Tokenization, loss masking, padding/packing and the DeepSpeed-Chat style split."""

    sources: list[DataSource] = []
    eval_sources: list[DataSource] = []
    tokenizer: str | None = None
    eot_token: str | None = None
    add_eot_token: bool = False
    max_seq_len: Annotated[int, Field(ge=2)] = 512
    loss_on: Literal["all", "completion"] = "all"
    packing: bool = False
    data_split: str = "10,0,0"
    phase: Annotated[int, Field(ge=1, le=3)] = 1
    eval_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    seed: NonNegativeInt = 1234
    cache_dir: str | None = None  # tokenized data; default .data-cache beside output_dir

    @field_validator("data_split")
    @classmethod
    def _three_fractions(cls, split: str) -> str:
        parts = split.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
            raise ValueError(f"expected three non-negative numbers like '2,4,4', got {split!r}")
        return split


class OptimConfig(Section):
    """AdamW hyper-parameters (DeepSpeed-Chat defaults for betas and clipping)."""

    name: Literal["adamw"] = "adamw"
    learning_rate: NonNegativeFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    eps: PositiveFloat = 1e-8
    grad_clip: PositiveFloat | None = 1.0


class ScheduleConfig(Section):
    """Learning-rate schedule: `transformers.get_scheduler`'s four, and DeepSpeed's three.

    The DeepSpeed ones (`warmup_lr`, `warmup_decay_lr`, `warmup_cosine_lr`) warm up from
    `warmup_min_lr` (or `warmup_min_ratio` x lr) with `warmup_type` log or linear;
    `total_steps` (default: the run's length) ends the decay; `cos_min_ratio` is the
    cosine floor. The peak is always `optim.learning_rate`.
    """

    type: Literal[
        "linear",
        "cosine",
        "constant",
        "constant_with_warmup",
        "warmup_lr",
        "warmup_decay_lr",
        "warmup_cosine_lr",
    ] = "cosine"
    warmup_steps: NonNegativeInt = 0
    warmup_min_lr: NonNegativeFloat = 0.0
    warmup_type: Literal["log", "linear"] = "log"
    warmup_min_ratio: NonNegativeFloat = 0.0
    cos_min_ratio: NonNegativeFloat = 1e-4
    total_steps: PositiveInt | None = None


class ParallelConfig(Section):
    """Device mesh (data, fsdp, tensor) and the ZeRO stage it emulates; -1 = the rest."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    @model_validator(mode="after")
    def _mesh_sizes(self) -> ParallelConfig:
        axes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for name, size in axes.items():
            if size != -1 and size < 1:
                raise ValueError(f"parallel.{name} must be >= 1 or -1 (the rest), got {size}")
        rest = [f"parallel.{name}" for name, size in axes.items() if size == -1]
        if len(rest) > 1:
            raise ValueError(f"at most one mesh axis may be -1, got {' and '.join(rest)}")
        return self


class TrainConfig(Section):
    """Loop length, batch sizes, and how often to log, evaluate and save. `resume_from`
    names another run's checkpoint to start from when the output directory holds none of
    its own: a DeepSpeed checkpoint directory (weights, Adam moments, step; dense runs),
    as `torch-ref train`, DeepSpeed or `jax-sft convert --to deepspeed` wrote it."""

    output_dir: str = "out/run"
    max_steps: PositiveInt | None = None
    epochs: PositiveInt = 1
    micro_batch_size: PositiveInt = 4
    eval_batch_size: PositiveInt | None = None
    gradient_accumulation_steps: PositiveInt = 1
    seed: NonNegativeInt = 1234
    log_every: PositiveInt = 10
    eval_every: PositiveInt | None = None
    save_every: PositiveInt | None = None
    keep_checkpoints: PositiveInt = 3
    resume_from: str | None = None


class LoggingConfig(Section):
    """Where progress goes. `print_loss` prints every step's loss as DeepSpeed-Chat's
    `--print_loss` does (`Epoch: E, Step: S, Rank: 0, loss = L`; S counts optimizer
    steps, and the loss reaches the host every step); `json` (attribute `as_json`) ends
    a training command's output with one JSON line, as `--json` does."""

    tensorboard: bool = False
    tensorboard_dir: str | None = None
    progress_bar: bool = True
    print_loss: bool = False
    style: Literal["default", "dschat"] = "default"
    as_json: bool = Field(False, alias="json")


class RunConfig(Section):
    """A whole run; every section has defaults, so an empty file is a valid config."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    sparse: SparseConfig = Field(default_factory=SparseConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @property
    def training_mode(self) -> str:
        """The way this run trains: "sparse", "lora", "prune" or "dense" (each backend has
        one implementation per name)."""
        if self.sparse.method != "none":
            return "sparse"
        if self.lora.rank > 0:
            return "lora"
        return "prune" if self.prune.enabled else "dense"

    @model_validator(mode="after")
    def _one_way_to_train_few(self) -> RunConfig:
        chosen = [
            f"{name} ({setting})"
            for name, setting, on in (
                ("sparse.method", self.sparse.method, self.sparse.method != "none"),
                ("lora.rank", self.lora.rank, self.lora.rank > 0),
                ("prune.rules", len(self.prune.rules), self.prune.enabled),
            )
            if on
        ]
        if len(chosen) > 1:
            raise ValueError(
                f"{' and '.join(chosen)}: choose one of sparse fine-tuning, LoRA and pruning"
            )
        return self


def with_sections(cfg: RunConfig, sections: dict) -> RunConfig:
    """A validated copy of `cfg` with fields replaced, given as {section: {field: value}}."""
    data = cfg.model_dump()
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return RunConfig.model_validate(data)
