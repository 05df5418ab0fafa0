"""The trainable module of a run: base, adapter start, vocabulary, the training mode.

The same steps, in the same order, as the JAX engine's start-up: read the base (and its
fingerprint for sparse runs), continue or merge an adapter, prepare the tokenizer, grow
the vocabulary, then make what trains: every parameter (dense), delta values (sparse),
LoRA factors, or every parameter under pruning masks. Rank 0 calls `build` again at
export time and loads the trained values into the fresh module, which works alike for
every ZeRO stage and precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch

from interop.config import RunConfig
from interop.data.tokenizer import load_tokenizer, prepare_tokenizer
from interop.errors import UserError
from interop.preflight import check_run
from interop.pruning.masks import Pruner
from interop.sparse_format import checked_adapter
from torch_ref.train import lora, prune, sparse
from torch_ref.train.distill import Distiller
from torch_ref.train.model import (
    Source,
    StoredWeights,
    load_hf_model,
    merge_adapter,
    resize_vocab,
    resolve_source,
)
from torch_ref.train.refusals import refuse_unsupported


@dataclass
class Built:
    model: torch.nn.Module
    tokenizer: object
    eot: str
    source: Source
    mode: str  # "dense" | "sparse" | "lora" | "prune"
    base_fingerprint: str | None = None
    pruner: Pruner | None = None
    notes: list[str] = field(default_factory=list)
    distiller: Distiller | None = None


def build(cfg: RunConfig, attn_implementation: str = "eager") -> Built:
    """The run's trainable module (on the CPU, float32, with `transformers`' attention
    `attn_implementation`) and its prepared tokenizer."""
    refuse_unsupported(cfg)
    _check_dtype(cfg.model.dtype)
    mode = cfg.training_mode
    source = resolve_source(cfg)
    model, notes = load_hf_model(source.model_dir, attn_implementation)
    stored = StoredWeights(source.model_dir, model)
    base_fp = stored.fingerprint() if mode == "sparse" else None
    deltas = None
    if mode == "sparse":
        sparse.check_supported(cfg, source.adapter_kind == "sparse-adapter")
        _, deltas = checked_adapter(source.adapter, source.model_dir, base_fp)
        count = sum(idx.size for idx, _ in deltas.values())
        notes.append(
            f"continuing the {count} entries of {source.adapter}; sparse.method and the "
            "budget do not choose them again"
        )
    elif source.adapter is not None and not (
        mode == "lora" and source.adapter_kind == "lora-adapter"
    ):
        merge_adapter(model, source, stored)
    tok_dir = Path(cfg.data.tokenizer) if cfg.data.tokenizer else source.model_dir
    tok, eot = prepare_tokenizer(
        load_tokenizer(tok_dir),
        model.config.model_type,
        eot_token=cfg.data.eot_token,
        add_eot_token=cfg.data.add_eot_token,
    )
    resize_vocab(model, len(tok), stored)
    check_run(cfg, model.config.to_dict())
    if cfg.model.remat:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "sparse":
        _refuse_tied(model, deltas)
        sparse.attach(model, deltas)
    elif mode == "lora":
        lora_adapter = source.adapter if source.adapter_kind == "lora-adapter" else None
        model = lora.attach(model, cfg, lora_adapter)
        if lora_adapter is not None:
            notes.append(f"continuing the LoRA factors of {lora_adapter}")
    distiller = None
    if mode == "prune" and cfg.prune.distill == "squarehead":
        distiller = Distiller(model, cfg.prune.distill_weight)  # the dense model, before masks
    pruner = prune.attach(model, cfg) if mode == "prune" else None
    notes = [*source.notes, *notes]
    return Built(model, tok, eot, source, mode, base_fp, pruner, notes, distiller)


def _check_dtype(dtype: str) -> None:
    """DeepSpeed's accelerator must support the compute dtype (its cpu one has no fp16)."""
    accelerator = deepspeed.get_accelerator()
    supported = {
        "float32": True,
        "bfloat16": accelerator.is_bf16_supported(),
        "float16": accelerator.is_fp16_supported(),
    }
    if not supported[dtype]:
        raise UserError(
            f"model.dtype: {dtype} is not supported by DeepSpeed on this device "
            f"({accelerator.device_name()})"
        )


def _refuse_tied(model: torch.nn.Module, deltas: dict) -> None:
    """A delta on a weight shared by two modules (tied embeddings) would reach one of them."""
    head = model.get_output_embeddings()
    if head is None or head.weight is not model.get_input_embeddings().weight:
        return
    for name in deltas:
        if model.get_parameter(name) is head.weight:
            raise UserError(
                f"sparse adapter: {name} is tied to the output head; deltas on tied "
                "embeddings are not supported by the PyTorch reference"
            )
