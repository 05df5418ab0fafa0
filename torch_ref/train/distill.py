"""SquareHead distillation in the reference (`interop.pruning.distill` defines it).

The teacher is a frozen copy of the model taken before any mask is attached: the dense
model the run starts from. Forward hooks on the transformer blocks of both models record
each block's output (the residual stream after the block); the student's only while its
loss forward runs, so the recomputation of activation checkpointing in the backward pass
records nothing. The teacher is rebuilt from the base on resume, as the JAX side restores
its copy from the checkpoint: the same dense weights either way.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from interop.data.examples import IGNORE
from interop.errors import UserError
from interop.pruning.distill import EPS
from torch_ref.train.loss import model_inputs


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of transformer blocks (Llama/Qwen2 `model.layers`, OPT
    `model.decoder.layers`, GPT-2 `transformer.h`)."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"prune.distill: no list of {count} transformer blocks in the model")


class Distiller:
    """The frozen teacher and the hooks that collect both models' block outputs."""

    def __init__(self, model: torch.nn.Module, weight: float):
        self.weight = weight
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self._student: list[torch.Tensor] = []
        self._teacher: list[torch.Tensor] = []
        self._recording = False
        for block in blocks(model):
            block.register_forward_hook(self._record_student)
        for block in blocks(self.teacher):
            block.register_forward_hook(lambda _m, _a, out: self._teacher.append(_first(out)))

    def _record_student(self, _module, _args, out) -> None:
        if self._recording:
            self._student.append(_first(out))

    def to(self, device: torch.device | str) -> Distiller:
        self.teacher.to(device)
        return self

    @contextmanager
    def student_forward(self) -> Iterator[None]:
        """Record the student's block outputs while the body runs its loss forward."""
        self._student.clear()
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def term(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        """The SquareHead sum of micro-batch `mb` over the scored tokens, differentiable
        in the student's block outputs recorded by the last `student_forward`."""
        self._teacher.clear()
        with torch.no_grad():
            self.teacher(**model_inputs(self.teacher, mb))
        scored = (mb["labels"][:, 1:] != IGNORE).float()
        total = torch.zeros((), dtype=torch.float32, device=scored.device)
        for s, t in zip(self._student, self._teacher, strict=True):
            s, t = s[:, :-1].float(), t[:, :-1].float()
            var = t.var(dim=-1, unbiased=False)
            nmse = (s - t).square().mean(dim=-1) / (var + EPS)
            total = total + (nmse * scored).sum()
        self._student.clear()
        self._teacher.clear()
        return total


def _first(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out
