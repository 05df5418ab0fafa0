"""`torch_ref.initialize(...)`: DeepSpeed's own engine, set up from the arguments that
`jax_sft.initialize` takes (`interop.initialize_args`), so one training loop runs on
either backend by changing the import:

    engine, optimizer, dataloader, lr_scheduler = torch_ref.initialize(
        model="path/to/hf_dir", config="ds_config.json", training_data="data/train.json")
    for batch in dataloader:
        loss = engine(batch)
        engine.backward(loss)
        engine.step()

`engine` is what `deepspeed.initialize` returns, around a module whose forward takes a
batch dict and returns the micro-batch's mean token loss (HF's causal-LM loss); the
optimizer (torch AdamW with the shared groups) and the schedule (the shared formula) are
client objects DeepSpeed steps. The data loader yields this rank's rows of the run's
micro-batches, the same rows the JAX loader places on this rank's devices.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import deepspeed
import torch

from interop.data.batches import Batches
from interop.data.run_data import run_data
from interop.errors import UserError
from interop.initialize_args import arguments, resolve
from torch_ref.train import distributed
from torch_ref.train.build import build
from torch_ref.train.data import rows
from torch_ref.train.ds_config import ds_config
from torch_ref.train.loss import forward_loss
from torch_ref.train.optimizer import make_optimizer, make_scheduler


class LossModule(torch.nn.Module):
    """`module(batch)` is the mean token loss of the micro-batch `batch`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        total, count = forward_loss(self.model, batch)
        return total / max(count, 1)


class RankLoader:
    """This rank's rows of the run's micro-batches on `device`; each pass is one epoch."""

    def __init__(self, batches: Batches, micro: int, rank: int, device: torch.device):
        self.batches, self.micro, self.rank, self.device = batches, micro, rank, device
        self.epoch = 0

    def __len__(self) -> int:
        return self.batches.steps_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for i in range(len(self)):
            batch = self.batches.batch(epoch * len(self) + i)
            yield rows(batch, self.rank * self.micro, self.micro, self.device)


def initialize(*args, **kwargs):
    """(engine, optimizer, dataloader, lr_scheduler), as `deepspeed.initialize` returns them."""
    named = arguments(args, kwargs)
    if named.get("dist_init_required") is not False:
        distributed.initialize()
    resolved = resolve(named, lambda cfg: distributed.world_size())
    cfg = resolved.cfg
    if cfg.sparse.regularization != "none":
        raise UserError(
            "sparse.regularization: not supported by torch_ref.initialize (its engine has no "
            "place for a penalty outside the loss); use torch-ref train"
        )
    built = build(cfg)
    dp = distributed.world_size()
    data = run_data(cfg, built.tokenizer, built.eot, dp, records=resolved.records)
    client = make_optimizer(built.model, cfg)
    engine, opt, _, scheduler = deepspeed.initialize(
        model=LossModule(built.model),
        optimizer=client,
        lr_scheduler=make_scheduler(client, cfg, data.total_steps()),
        config=ds_config(cfg, dp),
    )
    if distributed.is_main():
        for note in [*resolved.notes, *built.notes]:
            print(f"note: {note}", file=sys.stderr)
    micro = cfg.train.micro_batch_size
    loader = RankLoader(data.batches(micro * dp), micro, distributed.rank(), engine.device)
    return engine, opt, loader, scheduler
