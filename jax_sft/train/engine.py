"""The training engine: model, data, optimizer and checkpoints of one run, and its loop.

`Engine` holds what a run needs and offers the calls a DeepSpeed user knows
(`train_batch`, `evaluate`, `save_checkpoint`, `load_checkpoint`); `fit` is the whole
loop in one place. Nothing in a step forces a host sync: metrics stay on the device
until the logging interval (or a checkpoint, which must not capture a diverged state).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from interop.checkpoints.formats import adapter_base, detect_format
from interop.config import RunConfig
from interop.data.batches import Batches
from interop.data.pipeline import build_datasets
from interop.data.tokenizer import load_tokenizer, prepare_tokenizer
from interop.errors import UserError
from interop.lora_format import scaling
from interop.metrics_log import MetricsLog
from interop.outputs import output_dir
from interop.schedules import learning_rate
from interop.sparse_format import checked_adapter, merge_into, write_adapter
from interop.vocab import max_positions
from jax_sft.checkpoints.loading import (
    base_fingerprint,
    deltas_in_our_layout,
    read_checkpoint,
    with_lora_merged,
    write_checkpoint,
)
from jax_sft.lora.peft_io import export_peft, import_peft
from jax_sft.lora.training import LoraTraining, init_trained, lora_lr_scales
from jax_sft.models import registry
from jax_sft.models.vocab import resize_vocab
from jax_sft.sharding.distributed import barrier, is_main, to_host
from jax_sft.sharding.mesh import check_heads, data_parallel_size, make_mesh
from jax_sft.sharding.placement import build_placement
from jax_sft.sparse.deltas import zero_values
from jax_sft.sparse.fisher import fisher_scores
from jax_sft.sparse.select import dense_leaves, select, targets
from jax_sft.sparse.spiel import Spiel
from jax_sft.train.checkpointing import Checkpoints
from jax_sft.train.optimizer import make_optimizer
from jax_sft.train.step import init_state, make_eval_step, make_train_step
from jax_sft.train.trainable import DENSE, SparseTraining


def _flatten(tree: dict) -> list[tuple[tuple, object]]:
    return [
        (tuple(k.key for k in path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


ADAPTER_KINDS = ("sparse-adapter", "lora-adapter")


DROPOUT_KEYS = ("dropout", "attention_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")


class Engine:
    """One fine-tuning run on the JAX backend."""

    def __init__(self, cfg: RunConfig, model_dir: Path, *, base_dir: Path = Path(".")):
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        self.notes: list[str] = []
        self.adapter, self.adapter_kind = None, detect_format(model_dir)
        if self.adapter_kind in ADAPTER_KINDS:
            self.adapter, model_dir = model_dir, adapter_base(model_dir, cfg.model.base)
        self.model_dir = model_dir
        tok_dir = Path(cfg.data.tokenizer) if cfg.data.tokenizer else model_dir
        _, hf_config, flat = read_checkpoint(model_dir)
        self.base_fingerprint = (
            base_fingerprint(hf_config, flat)
            if cfg.sparse.method != "none" or self.adapter_kind == "sparse-adapter"
            else None
        )
        start = self._adapter_start(hf_config, flat)
        self.tokenizer, eot = prepare_tokenizer(
            load_tokenizer(tok_dir),
            hf_config["model_type"],
            eot_token=cfg.data.eot_token,
            add_eot_token=cfg.data.add_eot_token,
        )
        self.hf_config, flat = resize_vocab(hf_config, flat, len(self.tokenizer))
        if cfg.model.dropout:
            raise UserError("model.dropout: dropout is not implemented on the JAX backend; use 0")
        self.notes += [
            f"the model config sets {key} {hf_config[key]}; the JAX backend trains without dropout"
            for key in DROPOUT_KEYS
            if hf_config.get(key)
        ]
        limit = max_positions(self.hf_config)
        if cfg.data.max_seq_len > limit:
            raise UserError(
                f"data.max_seq_len: {cfg.data.max_seq_len} is beyond the model's {limit} positions"
            )
        self.mesh = make_mesh(cfg.parallel)
        check_heads(self.hf_config, self.mesh)
        dp = data_parallel_size(self.mesh)
        train, evals = build_datasets(cfg.data, self.tokenizer, eot, base_dir=base_dir)
        t = cfg.train
        self.accum = t.gradient_accumulation_steps
        pad = self.tokenizer.pad_token_id
        self.batches = Batches(
            train,
            batch_size=t.micro_batch_size * self.accum * dp,
            seq_len=cfg.data.max_seq_len,
            pad_id=pad,
            packing=cfg.data.packing,
            seed=t.seed,
        )
        self.eval_batches = (
            Batches(
                evals,
                batch_size=(t.eval_batch_size or t.micro_batch_size) * dp,
                seq_len=cfg.data.max_seq_len,
                pad_id=pad,
                packing=cfg.data.packing,
                seed=t.seed,
                shuffle=False,
            )
            if evals
            else None
        )
        self.total_steps = t.max_steps or t.epochs * self.batches.steps_per_epoch

        model = registry.model_from_flat(
            self.hf_config,
            flat.items(),
            dtype=cfg.model.dtype,
            param_dtype=cfg.model.param_dtype,
            remat=cfg.model.remat,
        )
        del flat
        axes = registry.param_axes(model)
        self.graphdef, params = nnx.split(model)
        params = nnx.to_pure_dict(params)
        host_params = jax.tree.map(np.asarray, params)  # replicated input, also multi-process
        arrays, self.mode = {"params": host_params}, DENSE
        table = registry.name_table(self.hf_config)
        flat_params = {registry.path_str(p): v for p, v in _flatten(host_params)}
        scales = None
        if cfg.sparse.method != "none":
            if start is None:
                scores = self._selection_scores(host_params, flat_params, train)
                indices = select(flat_params, cfg.sparse, t.seed, scores)
                values = zero_values(indices)
            else:
                indices = {p: idx for p, (idx, _) in start.items()}
                values = {p: v for p, (_, v) in start.items()}
            dense = dense_leaves(flat_params, cfg.sparse)
            trained = {"values": values, "dense": {p: flat_params[p] for p in dense}}
            arrays.update(indices=indices, trained=trained)
            self.mode = SparseTraining(
                regularization=cfg.sparse.regularization, reg_weight=cfg.sparse.reg_weight
            )
        elif cfg.lora.rank > 0:
            self.mode = LoraTraining.from_config(cfg.lora)
            trained = init_trained(flat_params, table, cfg.lora, t.seed)
            if start is not None:
                self.mode, trained["lora"] = start
            arrays["trained"] = trained
            scales = lora_lr_scales(trained, cfg)
        del flat_params
        self.optimizer = make_optimizer(
            cfg.optim, self.mode.decay_mask(arrays[self.mode.key], table), scales
        )
        self.placement = build_placement(
            self.mesh,
            cfg.parallel.zero_stage,
            params,
            axes,
            jax.eval_shape(self.optimizer.init, arrays[self.mode.key]),
            trained_key=self.mode.key,
            extra={k: v for k, v in arrays.items() if k != "params"},
        )
        self.state = jax.jit(
            lambda a: init_state(a, self.mode, self.optimizer, t.seed),
            out_shardings=self.placement.state,
        )(arrays)
        self.spiel = (
            Spiel(self.graphdef, self.mode, list(arrays["indices"]), cfg.sparse, self.total_steps)
            if cfg.sparse.method == "spiel"
            else None
        )
        self._train_step = make_train_step(self.graphdef, self.optimizer, self.placement, self.mode)
        self._eval_step = make_eval_step(self.graphdef, self.placement, self.mode)
        del params, model, arrays
        self._checkpoints: Checkpoints | None = None
        self.log: MetricsLog | None = None
        self.step = 0
        self._last_logged: dict = {}
        self._last_flush = time.monotonic()

    def _adapter_start(self, hf_config: dict, flat: dict) -> object:
        """With `model.path` an adapter: a run of the adapter's kind continues it (sparse:
        {path: (indices, values)}; LoRA: (mode, factors)); any other run trains the
        merged model (`flat` is merged in place) and gets None."""
        if self.adapter is None:
            return None
        table = registry.name_table(hf_config)
        if self.adapter_kind == "lora-adapter":
            config, lora = import_peft(self.adapter, table, registry.expected_shapes(hf_config))
            if self.cfg.lora.rank > 0:
                if config["r"] != self.cfg.lora.rank:
                    raise UserError(
                        f"lora.rank: {self.cfg.lora.rank}, but {self.adapter} has rank "
                        f"{config['r']}"
                    )
                self.notes.append(f"continuing the LoRA factors of {self.adapter}")
                return LoraTraining(scale=scaling(config)), lora
            flat.update(with_lora_merged(self.adapter, hf_config, flat))
        else:
            _, deltas = checked_adapter(self.adapter, self.model_dir, self.base_fingerprint)
            ours = deltas_in_our_layout(self.adapter, deltas, hf_config)
            if self.cfg.sparse.method != "none":
                count = sum(idx.size for idx, _ in ours.values())
                self.notes.append(
                    f"continuing the {count} entries of {self.adapter}; sparse.method and "
                    "the budget do not choose them again"
                )
                return ours
            for path, (indices, values) in ours.items():
                flat[path] = merge_into(flat[path], indices, values)
        self.notes.append(f"training the base {self.model_dir} with {self.adapter} merged in")
        return None

    def _selection_scores(
        self, params: dict, flat_params: dict, train: list
    ) -> dict[str, np.ndarray] | None:
        """What `fisher` and `lt-sft` rank entries by (None for the other methods).

        fisher: summed squared per-example gradients. lt-sft: |W_after - W_base| after
        `sparse.dense_steps` steps of full fine-tuning on the run's own batches, schedule
        and optimizer; training then restarts from the base with only those entries.
        """
        cfg, t = self.cfg, self.cfg.train
        method = cfg.sparse.method
        if method not in ("fisher", "lt-sft"):
            return None
        shapes = {k: v.shape for k, v in flat_params.items()}
        chosen = targets(shapes, cfg.sparse.target, dense_leaves(shapes, cfg.sparse))
        if method == "fisher":
            rows = Batches(
                train,
                batch_size=1,
                seq_len=cfg.data.max_seq_len,
                pad_id=self.tokenizer.pad_token_id,
                packing=False,
                seed=t.seed,
            )
            return fisher_scores(self.graphdef, params, rows, chosen, cfg.sparse.fisher_samples)
        table = registry.name_table(self.hf_config)
        optimizer = make_optimizer(cfg.optim, DENSE.decay_mask(params, table))
        state = init_state({"params": params}, DENSE, optimizer, t.seed)
        step = make_train_step(self.graphdef, optimizer)
        for i in range(cfg.sparse.dense_steps):
            batch = self._accumulation_batch(i)
            lr = learning_rate(i, cfg.optim.learning_rate, cfg.schedule, cfg.sparse.dense_steps)
            state, _ = step(state, batch, np.float32(lr))
        tuned = {registry.path_str(p): np.asarray(v) for p, v in _flatten(state["params"])}
        return {p: np.abs(tuned[p] - flat_params[p]) for p in chosen}

    # -- the calls a DeepSpeed user knows -------------------------------------------------

    def lr(self, step: int) -> float:
        return learning_rate(
            step, self.cfg.optim.learning_rate, self.cfg.schedule, self.total_steps
        )

    def _accumulation_batch(self, step: int) -> dict[str, np.ndarray]:
        """The host batch of optimizer step `step`, as [accumulation, micro, seq]."""
        batch = self.batches.batch(step)
        return {k: v.reshape(self.accum, -1, v.shape[-1]) for k, v in batch.items()}

    def global_batch(self, step: int) -> dict[str, jax.Array]:
        """The batch of optimizer step `step`, shaped [accumulation, micro, seq]."""
        shaped = self._accumulation_batch(step)
        # Each process places only the shards its own devices hold.
        return {
            k: jax.make_array_from_callback(v.shape, self.placement.batch, lambda i, v=v: v[i])
            for k, v in shaped.items()
        }

    def train_batch(self, batch: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
        """One optimizer step (on the run's own next batch unless one is given)."""
        batch = self.global_batch(self.step) if batch is None else batch
        lr = self.lr(self.step)
        if self.spiel is not None:
            self.spiel.observe(self.step, self.state, batch)
        self.state, metrics = self._train_step(self.state, batch, np.float32(lr))
        self.step += 1
        if self.spiel is not None:
            self.state = self.spiel.update(self.step, self.state)
        return {**metrics, "lr": lr}

    def evaluate(self) -> dict[str, float]:
        """Eval loss over the eval set and its perplexity.

        Default: averaged over all scored tokens. DeepSpeed-Chat style: the mean of the
        per-batch mean losses, as its `evaluation()` computes it.
        """
        if self.eval_batches is None:
            return {}
        sums, counts = [], []
        for i in range(self.eval_batches.steps_per_epoch):
            batch = self.eval_batches.batch(i)
            s, n = self._eval_step(self.state, batch)
            sums.append(s)
            counts.append(n)
        sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
        if self.cfg.logging.style == "dschat":
            loss = float(np.mean(sums / np.maximum(counts, 1)))
        else:
            loss = float(sums.sum() / max(counts.sum(), 1))
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 700.0))}

    @property
    def checkpoints(self) -> Checkpoints:
        """The run's checkpoint directory, opened on first use (evaluation needs none)."""
        if self._checkpoints is None:
            self._checkpoints = Checkpoints(
                self.out / "checkpoints", self.cfg.train.keep_checkpoints
            )
        return self._checkpoints

    def save_checkpoint(self) -> None:
        self.checkpoints.save(self.step, self.state, {"step": self.step})

    def load_checkpoint(self, step: int | None = None) -> int | None:
        """Restore the given (default: latest complete) checkpoint; returns its step."""
        step = self.checkpoints.latest_step() if step is None else step
        if step is None:
            return None
        self.state, record = self.checkpoints.restore(step, self.state)
        self.step = int(record["step"])
        return self.step

    # -- the loop --------------------------------------------------------------------------

    def _report_eval(self, printer) -> dict:
        result = self.evaluate()
        if result:
            self.log.write({"step": self.step, **result})
            if is_main():
                printer(result)
        return result

    def fit(self, printer=None) -> dict:
        """Train to the end (resuming from the latest checkpoint if there is one)."""
        printer = printer or (lambda result: None)
        t = self.cfg.train
        tb = None
        if self.cfg.logging.tensorboard:
            tb = Path(self.cfg.logging.tensorboard_dir or self.out / "tensorboard")
        self.log = MetricsLog(
            self.out / "metrics.jsonl",
            tensorboard_dir=tb,
            progress=self.cfg.logging.progress_bar,
            enabled=is_main(),
        )
        resumed = self.load_checkpoint()
        self.log.truncate_after(resumed or 0)
        first_eval = self._report_eval(printer) if resumed is None else {}
        last_eval = first_eval
        pending: list[tuple[int, dict]] = []
        started, start_step = time.monotonic(), self.step
        self._last_flush = started
        last_good = resumed
        try:
            while self.step < self.total_steps:
                pending.append((self.step + 1, self.train_batch()))
                done = self.step
                boundary = done % self.batches.steps_per_epoch == 0
                save = (t.save_every and done % t.save_every == 0) or done == self.total_steps
                if done % t.log_every == 0 or save or boundary or done == self.total_steps:
                    self._flush(pending, last_good)
                    pending = []
                    last = self._last_logged
                    self.log.show(
                        done,
                        self.total_steps,
                        last["loss"],
                        last["tokens_per_s"],
                        started,
                        start_step,
                    )
                if save:
                    self.save_checkpoint()
                    last_good = done
                if (
                    (t.eval_every and done % t.eval_every == 0)
                    or boundary
                    or done == self.total_steps
                ):
                    last_eval = self._report_eval(printer)
        finally:
            self.close()
        return {
            "steps": self.step,
            "first_eval": first_eval,
            "last_eval": last_eval,
            **self._last_logged,
        }

    def close(self) -> None:
        """Finish pending checkpoint writes (even when training stops on an error)."""
        if self._checkpoints is not None:
            self._checkpoints.close()
            self._checkpoints = None
        if self.log is not None:
            self.log.close()

    def _flush(self, pending: list[tuple[int, dict]], last_good: int | None) -> None:
        """Bring the pending step metrics to the host, log them, stop on a NaN loss."""
        host = jax.device_get([m for _, m in pending])
        now = time.monotonic()
        rate = sum(int(m["tokens"]) for m in host) / max(now - self._last_flush, 1e-9)
        self._last_flush = now
        for (step, _), m in zip(pending, host, strict=True):
            loss = float(m["loss"])
            if not math.isfinite(loss):
                where = (
                    f"the last good checkpoint is step {last_good} in {self.out / 'checkpoints'}"
                    if last_good
                    else "no checkpoint was saved"
                )
                raise UserError(f"training diverged: loss is {loss} at step {step}; {where}")
            entry = {
                "step": step,
                "loss": loss,
                "lr": float(m["lr"]),
                "grad_norm": float(m["grad_norm"]),
                "tokens": int(m["tokens"]),
                "tokens_per_s": rate,
            }
            self.log.write(entry)
            self._last_logged = entry

    def export_adapter(self, dst: Path, *, overwrite: bool = True) -> None:
        """A sparse run's deltas as an adapter directory (indices in HF layout); a LoRA
        run's factors as a peft adapter."""
        table = registry.name_table(self.hf_config)
        shapes = registry.expected_shapes(self.hf_config)
        if isinstance(self.mode, LoraTraining):
            lora = jax.device_get(self.state["trained"]["lora"])
            if is_main():
                with output_dir(dst, overwrite=overwrite) as tmp:
                    export_peft(tmp, lora, table, shapes, self.cfg.lora, str(self.model_dir))
            barrier("export_adapter")
            return
        indices = jax.device_get(self.state["indices"])
        values = jax.device_get(self.state["trained"]["values"])
        deltas = {}
        for path, idx in indices.items():
            name, transform = table.to_hf_name(path)
            deltas[name] = (transform.hf_flat_index(idx, shapes[path]), values[path])
        s = self.cfg.sparse
        config = {
            "method": s.method,
            "density": s.density,
            "num_tunable": s.num_tunable,
            "target": s.target,
            "base_model": str(self.model_dir),
            "base_fingerprint": self.base_fingerprint,
        }
        if is_main():
            with output_dir(dst, overwrite=overwrite) as tmp:
                write_adapter(tmp, deltas, config)
        barrier("export_adapter")

    def export_hf(self, dst: Path, *, overwrite: bool = True) -> None:
        """The trained model as a Hugging Face directory (weights in the param dtype);
        every process takes part in gathering, process 0 writes."""
        model = nnx.merge(self.graphdef, jax.jit(self.mode.params)(self.state))
        flat = {
            registry.path_str(p): to_host(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
        }
        if is_main():
            with output_dir(dst, overwrite=overwrite) as tmp:
                write_checkpoint(tmp, "hf", self.hf_config, flat)
                self.tokenizer.save_pretrained(tmp)
        barrier("export_hf")
