"""Which files make up a DeepSpeed checkpoint, and whether they are all there.

`engine.save_checkpoint(dir, tag)` writes `dir/tag/` and a file `dir/latest` holding the
tag. In the tag directory:

- ZeRO 0-2: `mp_rank_00_model_states.pt` (the module's weights in the compute dtype,
  parameter names and shapes, frozen weights from ZeRO-2 on, tied names, scheduler, step);
- ZeRO 3: one `zero_pp_rank_{r}_mp_rank_00_model_states.pt` per data-parallel rank (the
  same, with each rank's fragment of the frozen weights);
- ZeRO 1-3: one `zero_pp_rank_{r}_mp_rank_00_optim_states.pt` per rank (`bf16_` in front
  for bf16 runs): that rank's fp32 master partition and its Adam moments.

A checkpoint is refused, naming the file, when a rank file is missing, when its files
come from runs of different world sizes, or when it is tensor- or pipeline-parallel
(`mp_rank_01`, `layer_*` files), which we do not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from interop.errors import UserError

LATEST = "latest"
_MODEL = re.compile(r"^(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt$")
_OPTIM = re.compile(r"^(bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


def holds_states(path: Path) -> bool:
    """A DeepSpeed tag directory: it holds model-states files."""
    return path.is_dir() and any(_MODEL.match(p.name) for p in path.iterdir())


def is_deepspeed_dir(path: str | Path) -> bool:
    """A DeepSpeed checkpoint directory (with `latest`) or one of its tag directories."""
    p = Path(path)
    return p.is_dir() and ((p / LATEST).is_file() or holds_states(p))


def tag_dir(path: str | Path, tag: str | None = None) -> Path:
    """The tag directory to read: `tag`, else the one `latest` names, else `path` itself."""
    p = Path(path)
    if tag is not None:
        if not holds_states(p / tag):
            raise UserError(f"{p}: no checkpoint tagged {tag!r} (tags here: {_tags(p)})")
        return p / tag
    if holds_states(p):
        return p
    latest = p / LATEST
    if latest.is_file():
        named = latest.read_text().strip()
        if not holds_states(p / named):
            raise UserError(f"{latest}: names tag {named!r}, which holds no checkpoint here")
        return p / named
    raise UserError(f"{p}: not a DeepSpeed checkpoint (no {LATEST} file, no *_model_states.pt)")


def _tags(p: Path) -> str:
    found = sorted(d.name for d in p.iterdir() if holds_states(d)) if p.is_dir() else []
    return ", ".join(found) or "none"


@dataclass(frozen=True)
class RankFiles:
    """A tag directory's files: model states (one, or one per rank for ZeRO-3) and the
    optimizer partitions, by rank (none for ZeRO-0)."""

    dir: Path
    model: list[Path]
    optim: list[Path]
    bit16: str  # '' or the 'bf16_'/'fp16_' prefix of the optimizer files


def rank_files(directory: Path) -> RankFiles:
    """The files of one tag directory, every rank accounted for."""
    model: dict[int, Path] = {}
    optim: dict[int, Path] = {}
    prefixes = set()
    for p in sorted(directory.iterdir()):
        if p.name.startswith("layer_"):
            raise UserError(f"{p}: a pipeline-parallel checkpoint; not supported")
        if m := _MODEL.match(p.name):
            _single_model_parallel(p, m.group(2))
            model[int(m.group(1) or 0)] = p
        elif m := _OPTIM.match(p.name):
            _single_model_parallel(p, m.group(3))
            optim[int(m.group(2))] = p
            prefixes.add(m.group(1) or "")
    if len(prefixes) > 1:
        raise UserError(f"{directory}: optimizer files of both 16-bit and fp32 runs are mixed here")
    for kind, found in (("model states", model), ("optimizer states", optim)):
        for rank in range(max(found, default=-1) + 1):
            if rank not in found:
                raise UserError(
                    f"{directory}: the {kind} file of rank {rank} is missing "
                    f"(ranks found: {', '.join(map(str, sorted(found)))})"
                )
    if optim and len(model) > 1 and len(model) != len(optim):
        raise UserError(
            f"{directory}: {len(model)} model-states files but {len(optim)} optimizer files "
            "(files from runs of different world sizes?)"
        )
    return RankFiles(
        directory,
        [model[r] for r in sorted(model)],
        [optim[r] for r in sorted(optim)],
        prefixes.pop() if prefixes else "",
    )


def _single_model_parallel(path: Path, mp_rank: str) -> None:
    if int(mp_rank) != 0:
        raise UserError(f"{path}: a tensor-parallel checkpoint (mp_rank {mp_rank}); not supported")


def config_dir(path: str | Path, base: str | Path | None = None) -> Path:
    """Where the model's `config.json` is: `base` if given, else the checkpoint directory,
    the directory above it or above that (a run's output directory), or an `hf/` beside."""
    if base is not None:
        if not (Path(base) / "config.json").is_file():
            raise UserError(f"--base: {base} holds no config.json")
        return Path(base)
    p = Path(path).resolve()
    for d in (p, *list(p.parents)[:2]):
        for candidate in (d, d / "hf"):
            if (candidate / "config.json").is_file():
                return candidate
    raise UserError(
        f"--base: {path} is a DeepSpeed checkpoint, which holds no model config; name the "
        "Hugging Face model directory it was trained from"
    )


def consolidated_weights(directory: Path) -> list[Path]:
    """16-bit consolidated weights DeepSpeed may have written beside the partitions
    (`stage3_gather_16bit_weights_on_model_save`)."""
    names = ("pytorch_model.bin", "model.safetensors")
    return [d / n for d in (directory, directory.parent) for n in names if (d / n).is_file()]
