"""The model a run starts from: the HF checkpoint, its vocabulary grown, adapters resolved.

What the JAX engine does at start-up, done on a `transformers` model:

- `model.path` may be an adapter (sparse or peft LoRA); its base is `model.base` or the
  one its config names. A run of the adapter's kind continues it (see `sparse`, `lora`);
  any other run trains the base with the adapter merged in, merged in the stored dtype
  by the same `interop` functions the JAX side uses.
- Every dropout probability in the HF config is set to 0: the JAX models have no dropout,
  and a config that asks for it is reported in a note (OPT's `layerdrop` included).
- Weights are float32 (DeepSpeed keeps float32 master weights; `model.dtype` chooses the
  compute dtype through its bf16/fp16 sections), attention is HF's eager one.
- When the tokenizer has more tokens than the model rows (Llama's added `[PAD]`), the
  embedding and an untied head grow to the next multiple of 8 and the new rows are the
  mean of the old ones, computed in float64 and rounded to the stored dtype
  (`jax_sft/models/vocab.py`'s rule, not `resize_token_embeddings`' random rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

from interop.checkpoints.formats import adapter_base, detect_format
from interop.checkpoints.hf import HFCheckpointReader, is_hf_dir, read_hf_config
from interop.config import RunConfig
from interop.errors import UserError
from interop.lora_format import merge_lora
from interop.lora_format import read_adapter as read_lora
from interop.sparse_format import checked_adapter, fingerprint, merge_into
from interop.vocab import grown, padded_vocab

ADAPTER_KINDS = ("sparse-adapter", "lora-adapter")


@dataclass
class Source:
    """Where the weights come from: the base HF directory and an optional adapter."""

    model_dir: Path
    adapter: Path | None = None
    adapter_kind: str | None = None
    notes: list[str] = field(default_factory=list)


def resolve_source(cfg: RunConfig) -> Source:
    """The base directory (and adapter) of the run; `model.tiny` uses the base that
    `jax-sft train` cached in OUTPUT_DIR/base/hf (this backend does not build one)."""
    if cfg.model.path is None:
        cached = Path(cfg.train.output_dir) / "base" / "hf"
        if not is_hf_dir(cached):
            raise UserError(
                f"model.tiny: the PyTorch reference does not build tiny base models; run "
                f"`jax-sft train` on this config first (it caches {cached}) or set model.path"
            )
        return Source(cached, notes=[f"using the cached tiny base {cached}"])
    path = Path(cfg.model.path)
    kind = detect_format(path)
    if kind == "orbax":
        raise UserError(
            f"model.path: {path} is an Orbax directory; convert it first "
            "(jax-sft convert SRC DST --to hf)"
        )
    if kind not in ADAPTER_KINDS:
        return Source(path)
    return Source(adapter_base(path, cfg.model.base), path, kind)


def _is_dropout(key: str, value: object) -> bool:
    return (
        ("dropout" in key or "pdrop" in key or key == "layerdrop")
        and isinstance(value, float | int)
        and not isinstance(value, bool)
    )


def load_hf_model(
    model_dir: Path, attn_implementation: str = "eager"
) -> tuple[transformers.PreTrainedModel, list[str]]:
    """(float32 model in train mode without dropout, notes), with eager attention (the
    parity reference) unless `attn_implementation` says "sdpa". The config and the weight
    files are checked first, so a bad one is a one-line UserError."""
    read_hf_config(model_dir)
    HFCheckpointReader(model_dir).close()
    config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    notes = []
    for key, value in sorted(config.to_dict().items()):
        if _is_dropout(key, value):
            if value:
                notes.append(
                    f"the model config sets {key} {value}; the reference trains without "
                    "dropout, as the JAX backend does"
                )
            setattr(config, key, 0.0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir,
        config=config,
        dtype=torch.float32,
        attn_implementation=attn_implementation,
        local_files_only=True,
    )
    return model.train(), notes


def restore_dropout(model: transformers.PreTrainedModel, model_dir: Path) -> None:
    """Give the config back the base's own dropout values (zeroed for training) before
    it is saved, so the export is the base's architecture with new weights."""
    config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    for key, value in config.to_dict().items():
        if _is_dropout(key, value):
            setattr(model.config, key, value)


class StoredWeights:
    """The base checkpoint's tensors as stored (dtype included), by model parameter name."""

    def __init__(self, model_dir: Path, model: torch.nn.Module):
        self.reader = HFCheckpointReader(model_dir)
        params = {name for name, _ in model.named_parameters()}
        prefix = getattr(model, "base_model_prefix", "")
        self.stored: dict[str, str] = {}
        for name in self.reader.names():
            full = name if name in params else f"{prefix}.{name}"
            if full in params:
                self.stored[full] = name

    def get(self, name: str) -> np.ndarray:
        if name not in self.stored:
            raise UserError(f"{self.reader.path}: no tensor {name} in the base model")
        return self.reader.get(self.stored[name])

    def dtype(self, name: str) -> np.dtype:
        return self.reader.dtype(self.stored[name])

    def fingerprint(self) -> str:
        """`interop.sparse_format.fingerprint` of the base, as the JAX side computes it."""
        return fingerprint(self.stored, self.get)


def set_weight(model: torch.nn.Module, name: str, array: np.ndarray) -> None:
    """Replace the values of parameter `name` (cast to its dtype)."""
    param = model.get_parameter(name)
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.asarray(array, dtype=np.float32)).reshape(param.shape))


def merge_adapter(model: torch.nn.Module, source: Source, stored: StoredWeights) -> None:
    """Merge the source's adapter into the weights (a run of another kind trains the sum)."""
    if source.adapter_kind == "lora-adapter":
        config, factors = read_lora(source.adapter)
        names = [module + ".weight" for module in factors]
        merged = merge_lora({n: stored.get(n) for n in names}, config, factors)
    else:
        _, deltas = checked_adapter(source.adapter, source.model_dir, stored.fingerprint())
        merged = {n: merge_into(stored.get(n), idx, v) for n, (idx, v) in deltas.items()}
    for name, array in merged.items():
        set_weight(model, name, array)
    source.notes.append(f"training the base {source.model_dir} with {source.adapter} merged in")


def resize_vocab(model: transformers.PreTrainedModel, n_tokens: int, stored: StoredWeights) -> None:
    """Grow the vocabulary by the shared rule (`interop.vocab`), from the stored weights."""
    old = model.get_input_embeddings().weight.shape[0]
    if n_tokens <= old:
        return
    new_size = padded_vocab(n_tokens)
    weights = {}
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is None:
            continue
        name = next(n for n, p in model.named_parameters() if p is module.weight)
        rows = module.weight.detach().numpy().astype(stored.dtype(name))
        weights[name] = grown(rows, new_size, axis=0).astype(np.float32)
    model.resize_token_embeddings(new_size, mean_resizing=False)
    for name, array in weights.items():
        set_weight(model, name, array)
