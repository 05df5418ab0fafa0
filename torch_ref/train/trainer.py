"""The reference trainer: DeepSpeed's engine, one optimizer step per global batch.

Loss scaling under DeepSpeed. The JAX step sums token losses over every micro-batch of
the global batch (all accumulation steps, all data-parallel ranks) and divides by N, the
number of scored tokens in that whole global batch. DeepSpeed instead (a) divides each
`engine.backward` loss by the accumulation steps and (b) averages gradients over the dp
ranks. We switch (a) off (`scale_wrt_gas=False`) and feed each micro-batch's
`sum of token losses * dp / N`; (b) then divides the dp-sum by dp, so the gradient that
reaches the optimizer is exactly d(sum over the global batch / N). The logged loss is
the all-reduced sum / N. A sparse regularization penalty is added to the first
micro-batch's loss on every rank, so it enters the averaged gradient once, as the JAX
step adds its gradient after averaging (it is not part of the logged loss there either).
A distillation term (`torch_ref.train.distill`) is a sum over scored tokens like the
loss, so it is scaled with it; "loss" stays the cross entropy, "distill" is logged beside.

grad_norm is the global norm of that averaged gradient before clipping, as the JAX
metric: DeepSpeed's ZeRO and mixed-precision optimizers record it during `step`; with
ZeRO-0 in fp32 the client optimizer runs unwrapped and records none, so we compute it
from `param.grad` after the boundary all-reduce and before `step` clips.

When to log, save and evaluate is `interop.loop`, the loop the JAX engine runs too.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import deepspeed
import torch

from interop.checkpoints.deepspeed import DeepSpeedCheckpoint
from interop.checkpoints.deepspeed_files import rank_files, tag_dir
from interop.config import RunConfig
from interop.data.batches import Batches
from interop.data.run_data import run_data
from interop.errors import UserError
from interop.loop import eval_result, fit
from interop.outputs import ensure_space
from interop.schedules import learning_rate
from torch_ref.train import distributed, prune, sparse
from torch_ref.train.build import Built
from torch_ref.train.data import micro_batches, rows
from torch_ref.train.ds_config import ds_config
from torch_ref.train.loss import forward_loss
from torch_ref.train.optimizer import make_optimizer, make_scheduler

TAG = re.compile(r"step_(\d+)$")


class Trainer:
    """One fine-tuning run on the DeepSpeed engine."""

    def __init__(self, cfg: RunConfig, built: Built):
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        self.dp, self.rank = distributed.world_size(), distributed.rank()
        self.is_main = distributed.is_main()
        data = run_data(cfg, built.tokenizer, built.eot, self.dp)
        self.batches, self.eval_batches = data.global_batches(), data.eval_batches()
        self.total_steps = data.total_steps()
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.vocab_size = built.model.get_input_embeddings().weight.shape[0]
        optimizer = make_optimizer(built.model, cfg)
        if not optimizer.param_groups:
            raise UserError("the run has no trainable parameters")
        scheduler = make_scheduler(optimizer, cfg, self.total_steps)
        # This run's hyper-parameters per group, which a resumed checkpoint must not undo;
        # "lr" is the peak rate (the scheduler has already scaled the group's own "lr").
        self._groups = [
            {k: v for k, v in group.items() if k != "params"} | {"lr": group["initial_lr"]}
            for group in optimizer.param_groups
        ]
        self.engine, _, _, _ = deepspeed.initialize(
            model=built.model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config(cfg, self.dp, persistent_numel=sparse.penalty_numel(built.model, cfg)),
        )
        self.own_norm = self.engine.optimizer is optimizer  # ZeRO-0 fp32: unwrapped
        self.pruner = built.pruner
        self.distiller = built.distiller and built.distiller.to(self.engine.device)
        self.global_steps = 0
        self.resumed_from: Path | None = None

    def lr(self, step: int) -> float:
        c = self.cfg
        return learning_rate(step, c.optim.learning_rate, c.schedule, self.total_steps)

    def train_step(self) -> dict:
        """One optimizer step on the run's next global batch; its metrics."""
        t = self.cfg.train
        batch = self.batches.batch(self.global_steps)
        tokens = Batches.loss_tokens(batch)
        scale = self.dp / max(tokens, 1)
        parts = micro_batches(
            batch,
            t.gradient_accumulation_steps,
            t.micro_batch_size,
            self.dp,
            self.rank,
            self.engine.device,
        )
        loss_sum, distill_sum, grad_norm = 0.0, 0.0, None
        for a, mb in enumerate(parts):
            if self.distiller is None:
                total, _ = forward_loss(self.engine, mb)
                loss = total * scale
            else:
                with self.distiller.student_forward():
                    total, _ = forward_loss(self.engine, mb)
                term = self.distiller.term(mb)
                loss = (total + self.distiller.weight * term) * scale
                distill_sum += float(term.detach())
            penalty = sparse.penalty(self.engine.module, self.cfg) if a == 0 else None
            if penalty is not None:
                loss = loss + penalty
            self.engine.backward(loss, scale_wrt_gas=False)
            loss_sum += float(total.detach())
            if a == len(parts) - 1 and self.own_norm:
                grad_norm = self._grad_norm()
            self.engine.step()
        if grad_norm is None:
            grad_norm = float(self.engine.get_global_grad_norm())
        lr = self.lr(self.global_steps)
        self.global_steps += 1
        if self.pruner is not None:
            prune.cut(self.engine.module, self.pruner, self.global_steps)
        loss_sum, distill_sum = distributed.all_sum([loss_sum, distill_sum])
        metrics = {
            "loss": loss_sum / max(tokens, 1),
            "grad_norm": grad_norm,
            "tokens": tokens,
            "lr": lr,
        }
        if self.distiller is not None:
            metrics["distill"] = distill_sum / max(tokens, 1)
        return metrics

    def host_metrics(self, metrics: list[dict]) -> list[dict]:
        return metrics

    def _grad_norm(self) -> float:
        squares = [
            p.grad.detach().double().square().sum()
            for p in self.engine.module.parameters()
            if p.grad is not None
        ]
        return math.sqrt(float(sum(squares)))

    def evaluate(self) -> dict[str, float]:
        """Eval loss and perplexity, as the JAX engine computes them."""
        if self.eval_batches is None:
            return {}
        size = self.eval_batches.batch_size // self.dp
        sums, counts = [], []
        with torch.no_grad():
            for i in range(self.eval_batches.steps_per_epoch):
                mb = rows(self.eval_batches.batch(i), self.rank * size, size, self.engine.device)
                total, count = forward_loss(self.engine.module, mb)
                s, n = distributed.all_sum([float(total), float(count)])
                sums.append(s)
                counts.append(n)
        return eval_result(sums, counts, self.cfg.logging.style)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self) -> None:
        """A DeepSpeed checkpoint tagged step_N; only the newest keep_checkpoints stay."""
        step = self.global_steps
        params = list(self.engine.module.parameters())
        sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in params]
        nbytes = sum(4 * n * (3 if trained else 1) for n, trained in sizes)
        ensure_space(self.checkpoint_dir, nbytes, f"the checkpoint of step {step}")
        self.engine.save_checkpoint(
            str(self.checkpoint_dir), tag=f"step_{step}", client_state={"step": step}
        )
        if self.is_main:  # one more than asked, as the JAX engine keeps (`interop.loop`)
            for _, old in self._tags()[: -(self.cfg.train.keep_checkpoints + 1)]:
                shutil.rmtree(old)
        distributed.barrier()

    def _tags(self) -> list[tuple[int, Path]]:
        """(step, directory) of the run's DeepSpeed checkpoints, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(
            (int(m.group(1)), p)
            for p in self.checkpoint_dir.iterdir()
            if (m := TAG.match(p.name)) and p.is_dir()
        )

    def drop_checkpoints_from(self, step: int) -> int | None:
        """Remove the checkpoints from `step` on, pointing `latest` at the newest left."""
        if self.is_main:
            for found, path in self._tags():
                if found >= step:
                    shutil.rmtree(path)
            left = self._tags()
            latest = self.checkpoint_dir / "latest"
            if left:
                latest.write_text(left[-1][1].name)
            else:
                latest.unlink(missing_ok=True)
        distributed.barrier()
        tags = self._tags()
        return tags[-1][0] if tags else None

    def restore_latest(self) -> int | None:
        """Restore the latest checkpoint of the output directory, else the DeepSpeed
        checkpoint `train.resume_from` names; the step reached (None: neither)."""
        if (self.checkpoint_dir / "latest").is_file():
            load_dir, tag = self.checkpoint_dir, None
        elif self.cfg.train.resume_from:
            load_dir, tag = foreign_checkpoint(
                Path(self.cfg.train.resume_from), self.dp, self.cfg.parallel.zero_stage
            )
        else:
            return None
        path, client = self.engine.load_checkpoint(str(load_dir), tag=tag)
        if path is None:
            raise UserError(f"{load_dir}: cannot load the DeepSpeed checkpoint")
        self.global_steps = int(client.get("step", self.engine.global_steps))
        self.resumed_from = load_dir if tag is None else load_dir / tag
        self._reapply_hyperparameters()
        return self.global_steps

    def _reapply_hyperparameters(self) -> None:
        """DeepSpeed restores the saved run's learning rates, betas and weight decay with
        the optimizer state; this run's own (a lower rate after a NaN, say) win, as they do
        on the JAX side, and the schedule continues from the restored step."""
        scheduler = self.engine.lr_scheduler
        groups = scheduler.optimizer.param_groups
        for group, ours in zip(groups, self._groups, strict=True):
            group.update(ours)
            group["initial_lr"] = ours["lr"]
        scheduler.base_lrs = [ours["lr"] for ours in self._groups]
        for group, factor in zip(groups, scheduler.lr_lambdas, strict=True):
            group["lr"] = group["initial_lr"] * factor(scheduler.last_epoch)

    def fit(self, printer=None) -> dict:
        """Train to the end (resuming from the latest checkpoint if there is one)."""
        return fit(self, printer)

    def close(self) -> None:
        """Nothing pending: DeepSpeed writes checkpoints synchronously."""


def foreign_checkpoint(path: Path, dp: int, stage: int) -> tuple[Path, str]:
    """(load_dir, tag) for DeepSpeed's loader from `train.resume_from`, checked first: a
    checkpoint resumes only at the world size and ZeRO stage that wrote it (1 and 2 share
    their layout)."""
    directory = tag_dir(path)
    ranks = len(rank_files(directory).optim)
    if ranks and ranks != dp:
        raise UserError(
            f"train.resume_from: {directory} was written by {ranks} data-parallel ranks; "
            f"this run has {dp} (DeepSpeed resumes a ZeRO checkpoint at its world size)"
        )
    written = DeepSpeedCheckpoint(directory).stage
    if written != stage and {written, stage} != {1, 2}:
        raise UserError(
            f"train.resume_from: {directory} was written by a ZeRO-{written} run; this run is "
            f"ZeRO-{stage} (parallel.zero_stage)"
        )
    return directory.parent, directory.name
