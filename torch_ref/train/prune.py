"""Pruning in the reference: masks as parametrizations, cut by the shared `Pruner`.

DeepSpeed 0.19 no longer prunes, so the reference does it itself, with the JAX side's
semantics. Each targeted tensor becomes a parametrization (`torch.nn.utils.parametrize`):
`where(mask, original, 0)`, with the bool mask a buffer (saved in DeepSpeed's checkpoints
with the module, so a resumed run keeps its masks). The gradient of a pruned entry is
therefore zero, as in the JAX forward, and so are its Adam moments when it was pruned
before training; the effective weights hold exact zeros whatever the ZeRO stage keeps as
its master copy. Which entries are cut is decided by `interop.pruning.Pruner` on the HF
tensors, the one implementation both backends call, so equal weights give equal masks.

Cuts after step 0 read the current effective weights (gathered under ZeRO-3) after the
step and only change the mask buffers. `topk` (learned scores, unstructured rules) adds
the scores as a parameter of the parametrization, trained by the same optimizer through
a straight-through top-k, as DeepSpeed's compression layers did; the mask buffer then
records the mask the next step uses. Not in the reference (the JAX backend has them):
`movement`, learned rows/heads, regularization, and `topk` under ZeRO-3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import deepspeed
import numpy as np
import torch
from torch.nn.utils import parametrize

from interop.checkpoints.hf import HFCheckpointReader
from interop.checkpoints.hf_write import write_hf_checkpoint
from interop.config import RunConfig
from interop.outputs import write_json
from interop.pruning.masks import Pruner
from interop.pruning.shrink import pruning_report, shrink


class Masked(torch.nn.Module):
    """weight -> where(mask, weight, 0); the mask is a bool buffer."""

    def __init__(self, mask: np.ndarray):
        super().__init__()
        self.register_buffer("mask", torch.from_numpy(np.ascontiguousarray(mask)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype))


class _TopK(torch.autograd.Function):
    """The 0/1 mask of the `keep` best scores; its gradient passes to the scores."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: int) -> torch.Tensor:
        mask = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
        mask[torch.topk(scores.detach().reshape(-1), keep).indices] = 1.0
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class Learned(Masked):
    """weight -> weight x topk(scores) once `active` (the rule's start_step reached);
    `mask` records the current mask."""

    def __init__(self, scores: np.ndarray, keep: int, active: bool):
        super().__init__(np.ones(scores.shape, bool))
        self.scores = torch.nn.Parameter(torch.from_numpy(scores))
        self.keep = keep
        self.register_buffer("active", torch.tensor(active))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not bool(self.active):
            return weight
        return weight * _TopK.apply(self.scores, self.keep).to(weight.dtype)

    def record(self) -> None:
        with torch.no_grad():
            if bool(self.active):
                self.mask.copy_(_TopK.apply(self.scores, self.keep) > 0.5)


def pruner_for(model: torch.nn.Module, cfg: RunConfig) -> Pruner:
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    return Pruner(cfg.prune, model.config.to_dict(), shapes)


def attach(model: torch.nn.Module, cfg: RunConfig) -> Pruner:
    """Mask every targeted tensor of `model` (cut at once when the schedule says step 0,
    zeroing the pruned weights); the run's Pruner."""
    pruner = pruner_for(model, cfg)
    masks = pruner.initial_masks()
    if pruner.cuts_at(0):
        state = model.state_dict()
        weights = {n: state[n].detach().float().numpy() for n in pruner.ranked}
        masks = pruner.cut(0, weights, masks)
    learned = {u.ranked[0]: u for u in pruner.learned()}
    for name, mask in masks.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        if name in learned:
            unit = learned[name]
            rule = cfg.prune.rules[unit.rule]
            keep = unit.keep_count(unit.group.sparsity)
            masking = Learned(pruner.initial_scores(unit), keep, rule.start_step == 0)
            masking.record()
        else:
            with torch.no_grad():
                getattr(module, attr).mul_(torch.from_numpy(mask))
            masking = Masked(mask)
        parametrize.register_parametrization(module, attr, masking)
    return pruner


def masked_modules(model: torch.nn.Module) -> Iterator[tuple[str, Masked]]:
    """(HF tensor name, its Masked parametrization) for every masked tensor."""
    for name, module in model.named_modules():
        if isinstance(module, Masked):
            owner, _, rest = name.partition(".parametrizations.")
            yield f"{owner}.{rest.rpartition('.')[0]}", module


def masks(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: m.mask.cpu().numpy() for name, m in masked_modules(model)}


def cut(model: torch.nn.Module, pruner: Pruner, done: int) -> None:
    """What pruning does once `done` steps are done: learned masks switch on at their
    start_step and record their current mask; a scheduled cut sets new mask buffers
    from the current effective weights."""
    learned = {u.ranked[0]: pruner.cfg.rules[u.rule].start_step for u in pruner.learned()}
    for name, m in masked_modules(model):
        if isinstance(m, Learned):
            m.active.fill_(done >= learned[name])
            m.record()
    if done == 0 or not pruner.cuts_at(done):
        return
    owners = {name: name.rpartition(".") for name in pruner.ranked}
    weights = {}
    for name, (owner, _, attr) in owners.items():
        module = model.get_submodule(owner)
        original = module.parametrizations[attr].original
        with deepspeed.zero.GatheredParameters([original]), torch.no_grad():
            weights[name] = getattr(module, attr).detach().float().cpu().numpy()
    new = pruner.cut(done, weights, masks(model))
    for name, m in masked_modules(model):
        m.mask.copy_(torch.from_numpy(new[name]))


def set_masks(model: torch.nn.Module, found: dict[str, np.ndarray]) -> None:
    """Load a run's masks into a freshly built module (the export's)."""
    for name, m in masked_modules(model):
        m.mask.copy_(torch.from_numpy(found[name]))


def unmask(model: torch.nn.Module) -> None:
    """Remove the parametrizations, leaving each weight with its mask buffer applied
    (exact zeros; a learned mask as last recorded)."""
    for name, m in list(masked_modules(model)):
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        original = module.parametrizations[attr].original.detach()
        kept = torch.where(m.mask, original, torch.zeros((), dtype=original.dtype))
        parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        with torch.no_grad():
            getattr(module, attr).copy_(kept)


def ship(hf_dir: Path, report: Path, pruner: Pruner, found: dict[str, np.ndarray]) -> None:
    """Rewrite the dense export in `hf_dir` as the model pruning ships (structures cut out
    where its config can say so) and write `report` (pruning.json)."""
    config = json.loads((hf_dir / "config.json").read_text())
    with HFCheckpointReader(hf_dir) as reader:
        tensors = dict(reader)
    new_config, cut_tensors, notes = shrink(config, tensors, pruner, found)
    if new_config != config:
        for old in hf_dir.glob("model*.safetensors*"):
            old.unlink()
        write_hf_checkpoint(hf_dir, cut_tensors.items(), new_config)
    write_json(report, pruning_report(pruner, found, shrunk=new_config != config, notes=notes))
