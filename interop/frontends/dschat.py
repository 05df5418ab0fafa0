"""DeepSpeed-Chat step-1 command lines, accepted verbatim and turned into a RunConfig.

`dschat_flags.dschat_parser()` declares every flag of DeepSpeed-Chat's
`training/step1_supervised_finetuning/main.py` with its default (plus the ones
`deepspeed.add_config_arguments` adds: `--deepspeed`, `--deepspeed_config` and the
deprecated `--deepscale`, `--deepscale_config`), so a `run_*.sh` script's flags parse here
unchanged. `run_config_from_dschat(argv, cwd=...)` maps them onto RunConfig fields and fixes
what DeepSpeed-Chat hard-codes: AdamW with betas (0.9, 0.95) and eps 1e-8, gradient
clipping 1.0, loss on every non-pad token, right padding to `--max_seq_len` (no packing),
phase-1 data split, and the `dschat` output style (eval before training and after every
epoch, `ppl: ..., loss: ...`).

Where this differs from running DeepSpeed-Chat, on purpose:

- Nothing is downloaded. `--data_path local/jsonfile` reads `data/train.json` and
  `data/eval.json` under `cwd` (DeepSpeed-Chat reads its app directory's); other entries must
  be local files (train only) or directories holding `train.json` and `eval.json`. Hub
  dataset names and hub model names are errors naming the flag.
- `--sft_only_data_path` sources skip the split in DeepSpeed-Chat (all of their train and
  eval data is used): they become sources with `split: false`.
- `--dtype` also accepts `fp32` (DeepSpeed-Chat: fp16 or bf16 only; default fp16).
- `--deepspeed_config FILE` is applied on top of the flags (DeepSpeed-Chat itself would
  refuse it, having built its own config), via `interop.frontends.deepspeed_json`.
- `--lora_dim N` (N > 0) is LoRA as DeepSpeed-Chat's `convert_linear_layer_to_lora` does
  it: rank N on every linear layer whose module name contains `--lora_module_name`, at
  its scale `lora_scaling / lora_dim` = 1/N (so `lora.alpha` is 1), the adapted weights
  frozen, the LoRA factors in their own decayed group at `--lora_learning_rate`, and
  without `--only_optimize_lora` every other parameter trained too. A module name that
  matches no linear layer is an error here (DeepSpeed-Chat would silently adapt nothing).
  The factors start from peft's init (A uniform in +-1/sqrt(in)), not DeepSpeed-Chat's
  (+-1/sqrt(N)).
- `--data_output_path` is where the tokenized data is cached (`data.cache_dir`), as
  DeepSpeed-Chat caches its own there (default `/tmp/data_files/`).
- Flags with no effect here (offload, the LoRA flags when `--lora_dim` is 0,
  `--local_rank`, `--compute_fp32_loss`: the loss is always float32)
  are accepted and listed in the notes when given.

The schedule length is DeepSpeed-Chat's `epochs * ceil(micro-batches per epoch /
gradient_accumulation_steps)`: the config carries `train.epochs` and no `train.max_steps`,
and the trainer counts the batches.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from interop.adapter_config import SparseConfig
from interop.config import RunConfig
from interop.config_files import deep_merge, describe_error
from interop.errors import UserError
from interop.frontends.deepspeed_json import overrides_from_deepspeed
from interop.frontends.dschat_flags import DTYPES, PROG, dschat_parser, notes_on_flags

SUPPORTED_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
LOCAL_JSONFILE = "local/jsonfile"


class _Builder:
    """The nested config being built, and which flag set each dotted key (for errors)."""

    def __init__(self) -> None:
        self.config: dict[str, dict[str, Any]] = {}
        self.origins: dict[str, str] = {}

    def set(self, key: str, value: Any, origin: str) -> None:
        section, field = key.split(".")
        self.config.setdefault(section, {})[field] = value
        self.origins[key] = origin

    def origin(self, loc: str) -> str:
        """The flag (or file) to blame for a validation error at dotted `loc`."""
        for key in sorted(self.origins, key=len, reverse=True):
            if loc == key or loc.startswith(key + "."):
                return self.origins[key]
        inside = [origin for key, origin in self.origins.items() if key.startswith(loc + ".")]
        return inside[0] if inside else PROG


def _local(cwd: Path, entry: str) -> Path:
    path = Path(entry).expanduser()
    return path if path.is_absolute() else cwd / path


def _data_entry(flag: str, entry: str, cwd: Path) -> tuple[list[dict], list[dict]]:
    """Train and eval sources for one `--data_path`/`--sft_only_data_path` entry."""
    if entry == LOCAL_JSONFILE:
        folder, fmt = cwd / "data", "prompt_chosen"
    else:
        folder, fmt = _local(cwd, entry), "auto"
        if folder.is_file():
            return [{"path": str(folder), "format": fmt}], []
        if not folder.exists():
            raise UserError(
                f"{flag} {entry}: no such local file or directory under {cwd}; datasets are"
                f" never downloaded here (use {LOCAL_JSONFILE} or a path to a JSON/JSONL file)"
            )
    train, evaluation = folder / "train.json", folder / "eval.json"
    if not (train.is_file() and evaluation.is_file()):
        raise UserError(f"{flag} {entry}: needs both {train} and {evaluation}")
    return [{"path": str(train), "format": fmt}], [{"path": str(evaluation), "format": fmt}]


def _data(b: _Builder, args: argparse.Namespace, cwd: Path) -> None:
    sources: list[dict] = []
    eval_sources: list[dict] = []
    for entry in args.data_path:
        train, evaluation = _data_entry("--data_path", entry, cwd)
        sources += train
        eval_sources += evaluation
    for entry in args.sft_only_data_path:
        train, evaluation = _data_entry("--sft_only_data_path", entry, cwd)
        sources += [{**s, "split": False} for s in train]
        eval_sources += [{**s, "split": False} for s in evaluation]
    origin = f"--data_path {' '.join(args.data_path)}"
    b.set("data.sources", sources, origin)
    b.set("data.eval_sources", eval_sources, origin)
    b.set("data.data_split", args.data_split, f"--data_split {args.data_split}")
    b.set("data.phase", 1, "DeepSpeed-Chat step 1")
    b.set("data.loss_on", "all", "DeepSpeed-Chat step 1")
    b.set("data.packing", False, "DeepSpeed-Chat step 1")
    b.set("data.max_seq_len", args.max_seq_len, f"--max_seq_len {args.max_seq_len}")
    b.set("data.seed", args.seed, f"--seed {args.seed}")
    b.set("data.add_eot_token", args.add_eot_token, "--add_eot_token")
    flag = f"--data_output_path {args.data_output_path}"
    b.set("data.cache_dir", str(_local(cwd, args.data_output_path)), flag)
    b.set("data.eot_token", args.eot_token, f"--eot_token {args.eot_token}")


def _model(b: _Builder, args: argparse.Namespace, cwd: Path) -> None:
    name = args.model_name_or_path
    path = _local(cwd, name)
    if not path.is_dir():
        raise UserError(
            f"--model_name_or_path {name}: no such local directory under {cwd}; models are"
            " never downloaded here (give a Hugging Face checkpoint directory)"
        )
    flag = f"--model_name_or_path {name}"
    b.set("model.path", str(path), flag)
    b.set("data.tokenizer", str(path), flag)
    b.set("model.dtype", DTYPES[args.dtype], f"--dtype {args.dtype}")
    b.set("model.remat", args.gradient_checkpointing, "--gradient_checkpointing")
    if args.dropout is not None:
        b.set("model.dropout", args.dropout, f"--dropout {args.dropout}")


def _optim(b: _Builder, args: argparse.Namespace) -> None:
    if args.lr_scheduler_type not in SUPPORTED_SCHEDULERS:
        raise UserError(
            f"--lr_scheduler_type {args.lr_scheduler_type}: not implemented"
            f" (supported: {', '.join(SUPPORTED_SCHEDULERS)})"
        )
    fixed = "DeepSpeed-Chat's AdamW"
    b.set("optim.name", "adamw", fixed)
    b.set("optim.learning_rate", args.learning_rate, f"--learning_rate {args.learning_rate}")
    b.set("optim.weight_decay", args.weight_decay, f"--weight_decay {args.weight_decay}")
    b.set("optim.betas", [0.9, 0.95], fixed)
    b.set("optim.eps", 1e-8, fixed)
    b.set("optim.grad_clip", 1.0, "DeepSpeed-Chat's gradient_clipping")
    b.set("schedule.type", args.lr_scheduler_type, f"--lr_scheduler_type {args.lr_scheduler_type}")
    b.set(
        "schedule.warmup_steps",
        args.num_warmup_steps,
        f"--num_warmup_steps {args.num_warmup_steps}",
    )


def _train(b: _Builder, args: argparse.Namespace, cwd: Path) -> None:
    b.set(
        "train.micro_batch_size",
        args.per_device_train_batch_size,
        f"--per_device_train_batch_size {args.per_device_train_batch_size}",
    )
    b.set(
        "train.eval_batch_size",
        args.per_device_eval_batch_size,
        f"--per_device_eval_batch_size {args.per_device_eval_batch_size}",
    )
    b.set("train.epochs", args.num_train_epochs, f"--num_train_epochs {args.num_train_epochs}")
    b.set(
        "train.gradient_accumulation_steps",
        args.gradient_accumulation_steps,
        f"--gradient_accumulation_steps {args.gradient_accumulation_steps}",
    )
    b.set("train.seed", args.seed, f"--seed {args.seed}")
    if args.output_dir is not None:
        b.set(
            "train.output_dir", str(_local(cwd, args.output_dir)), f"--output_dir {args.output_dir}"
        )
    b.set("parallel.zero_stage", args.zero_stage, f"--zero_stage {args.zero_stage}")
    b.set("logging.style", "dschat", "DeepSpeed-Chat step 1")
    b.set("logging.print_loss", args.print_loss, "--print_loss")
    b.set("logging.tensorboard", args.enable_tensorboard, "--enable_tensorboard")
    # DeepSpeed-Chat's monitor writes to <tensorboard_path>/ds_tensorboard_logs/<job name>.
    tb_dir = _local(cwd, args.tensorboard_path) / "ds_tensorboard_logs" / "step1_model_tensorboard"
    b.set("logging.tensorboard_dir", str(tb_dir), f"--tensorboard_path {args.tensorboard_path}")


def _sparse(b: _Builder, args: argparse.Namespace) -> None:
    """`--sparse_method random --sparse_density 0.05` (and every other `sparse.*` field)."""
    for name in SparseConfig.model_fields:
        value = getattr(args, f"sparse_{name}")
        if value is not None:
            b.set(f"sparse.{name}", value, f"--sparse_{name} {value}")


def _lora(b: _Builder, args: argparse.Namespace) -> None:
    """DeepSpeed-Chat's LoRA (module docstring) as `lora.*` settings."""
    if args.lora_dim <= 0:
        return
    dim = f"--lora_dim {args.lora_dim}"
    b.set("lora.rank", args.lora_dim, dim)
    b.set("lora.alpha", 1.0, f"{dim} (DeepSpeed-Chat's scale 1/lora_dim)")
    name = args.lora_module_name
    b.set("lora.target_modules", f".*{re.escape(name)}.*", f"--lora_module_name {name}")
    lr = args.lora_learning_rate
    b.set("lora.learning_rate", lr, f"--lora_learning_rate {lr}")
    if args.only_optimize_lora:
        b.set("lora.dense_trainable", [], "--only_optimize_lora")
    else:
        b.set("lora.dense_trainable", [".*"], f"{dim} without --only_optimize_lora")


def run_config_from_dschat(
    argv: list[str], *, cwd: Path, data_parallel_size: int = 1
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The RunConfig (as a validated nested dict) and notes for DeepSpeed-Chat step-1 flags.

    Relative paths resolve against `cwd`; `data_parallel_size` is the world size used by a
    `--deepspeed_config` file's batch-size rule.
    """
    parser = dschat_parser()
    args = parser.parse_args(argv)
    b = _Builder()
    _model(b, args, cwd)
    _data(b, args, cwd)
    _optim(b, args)
    _train(b, args, cwd)
    _sparse(b, args)
    _lora(b, args)
    notes = notes_on_flags(parser, args)
    config_file = args.deepspeed_config or args.deepscale_config
    if args.deepscale_config and not args.deepspeed_config:
        notes.append("--deepscale_config is deprecated; read as --deepspeed_config")
    config = b.config
    if config_file is not None:
        path = _local(cwd, config_file)
        overrides, ds_notes = overrides_from_deepspeed(path, data_parallel_size=data_parallel_size)
        config = deep_merge(config, overrides)
        for section, fields in overrides.items():
            for field in fields:
                b.origins[f"{section}.{field}"] = str(path)
        notes += ds_notes
    try:
        RunConfig.model_validate(config)
    except ValidationError as exc:
        loc, message = describe_error(exc.errors()[0])
        raise UserError(f"{b.origin(loc)}: {message}") from None
    return config, notes
