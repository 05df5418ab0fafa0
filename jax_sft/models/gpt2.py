"""GPT-2 as a Flax NNX model.

HF stores GPT-2's projections as `Conv1D`, whose weight is already [in, out], so unlike
the other families no kernel is transposed. The fused q/k/v projection `c_attn`
([embed, 3 * embed] in HF) is kept here as [embed, 3, embed] so that a tensor-parallel
split of the last axis cuts whole heads of q, k and v alike; the name table records the
reshape. Embeddings are tied to the output head.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from interop.errors import UserError
from jax_sft.models import kv_cache
from jax_sft.models.hf_names import NameTable, Rule, merge_tail
from jax_sft.models.layers import (
    ACTIVATIONS,
    Embed,
    LayerNorm,
    Linear,
    call_layer,
    normal_init,
    output_kernel,
)

MODEL_TYPES = ("gpt2",)
SCANS = False  # not stacked: a block's attention scale may depend on its index


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int
    activation: str
    layer_norm_epsilon: float
    scale_attn_weights: bool
    scale_attn_by_inverse_layer_idx: bool
    initializer_range: float

    @classmethod
    def from_hf(cls, hf: dict) -> GPT2Config:
        act = hf.get("activation_function", "gelu_new")
        if act not in ACTIVATIONS:
            raise UserError(f"config.json: activation_function '{act}' is not supported")
        if hf.get("tie_word_embeddings", True) is False:
            raise UserError("config.json: GPT-2 with untied embeddings is not supported")
        e = hf["n_embd"]
        return cls(
            vocab_size=hf["vocab_size"],
            n_positions=hf["n_positions"],
            n_embd=e,
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_inner=hf.get("n_inner") or 4 * e,
            activation=act,
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
            scale_attn_weights=bool(hf.get("scale_attn_weights", True)),
            scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
            initializer_range=hf.get("initializer_range", 0.02),
        )


def name_table(cfg: GPT2Config) -> NameTable:
    """Our parameter paths <-> HF `GPT2LMHeadModel` names (Conv1D: no transposes)."""
    layer = "transformer.h.{i}."
    rules = [
        Rule("wte.embedding", "transformer.wte.weight"),
        Rule("wpe.embedding", "transformer.wpe.weight"),
        Rule("ln_f.scale", "transformer.ln_f.weight"),
        Rule("ln_f.bias", "transformer.ln_f.bias"),
        Rule("h.{i}.attn.c_attn.kernel", f"{layer}attn.c_attn.weight", merge_tail(2)),
        Rule("h.{i}.attn.c_attn.bias", f"{layer}attn.c_attn.bias", merge_tail(2)),
    ]
    for ln in ("ln_1", "ln_2"):
        rules.append(Rule(f"h.{{i}}.{ln}.scale", f"{layer}{ln}.weight"))
        rules.append(Rule(f"h.{{i}}.{ln}.bias", f"{layer}{ln}.bias"))
    for proj in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        rules.append(Rule(f"h.{{i}}.{proj}.kernel", f"{layer}{proj}.weight"))
        rules.append(Rule(f"h.{{i}}.{proj}.bias", f"{layer}{proj}.bias"))
    ignored = ("lm_head.weight", r".*\.attn\.bias", r".*\.attn\.masked_bias")
    return NameTable(tuple(rules), base_prefix="transformer.", ignored=ignored)


class FusedQKV(nnx.Module):
    """q, k, v = x @ kernel[:, j] + bias[j] for j = 0, 1, 2; kernel [embed, 3, embed]."""

    def __init__(
        self, e: int, cfg: GPT2Config, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs
    ):
        self.dtype = dtype
        self.kernel = nnx.Param(
            normal_init(rngs, (e, 3, e), cfg.initializer_range, param_dtype),
            axes=("embed", None, "heads"),
        )
        self.bias = nnx.Param(jnp.zeros((3, e), param_dtype), axes=(None, "heads"))

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel[...].astype(self.dtype)
        return jnp.einsum("bse,ejf->bsjf", x.astype(self.dtype), k) + self.bias[...].astype(
            self.dtype
        )


class Attention(nnx.Module):
    def __init__(
        self,
        cfg: GPT2Config,
        layer_idx: int,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        e = cfg.n_embd
        self.c_attn = FusedQKV(e, cfg, dtype, param_dtype, rngs)
        self.c_proj = Linear(
            e,
            e,
            axes=("heads", "embed"),
            use_bias=True,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            init_std=cfg.initializer_range,
        )
        self.num_heads = cfg.n_head
        d = e // cfg.n_head
        scale = d**-0.5 if cfg.scale_attn_weights else 1.0
        self.scale = scale / (layer_idx + 1) if cfg.scale_attn_by_inverse_layer_idx else scale

    def __call__(
        self, x: jax.Array, allowed: jax.Array, kv: kv_cache.LayerKV | None
    ) -> tuple[jax.Array, kv_cache.LayerKV | None]:
        b, s, e = x.shape
        h = self.num_heads
        qkv = self.c_attn(x).reshape(b, s, 3, h, e // h)
        out, kv = kv_cache.attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], allowed, self.scale, kv)
        return self.c_proj(out.reshape(b, s, e)), kv


class MLP(nnx.Module):
    def __init__(self, cfg: GPT2Config, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        kw = dict(
            use_bias=True,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            init_std=cfg.initializer_range,
        )
        self.c_fc = Linear(cfg.n_embd, cfg.n_inner, axes=("embed", "mlp"), **kw)
        self.c_proj = Linear(cfg.n_inner, cfg.n_embd, axes=("mlp", "embed"), **kw)
        self.act = ACTIVATIONS[cfg.activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nnx.Module):
    def __init__(
        self,
        cfg: GPT2Config,
        layer_idx: int,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        ln = dict(eps=cfg.layer_norm_epsilon, affine=True, param_dtype=param_dtype)
        self.ln_1 = LayerNorm(cfg.n_embd, **ln)
        self.attn = Attention(cfg, layer_idx, dtype, param_dtype, rngs)
        self.ln_2 = LayerNorm(cfg.n_embd, **ln)
        self.mlp = MLP(cfg, dtype, param_dtype, rngs)

    def __call__(
        self, x: jax.Array, allowed: jax.Array, kv: kv_cache.LayerKV | None
    ) -> tuple[jax.Array, kv_cache.LayerKV | None]:
        h, kv = self.attn(self.ln_1(x), allowed, kv)
        x = x + h
        return x + self.mlp(self.ln_2(x)), kv


class GPT2(nnx.Module):
    """Causal LM: token ids -> fp32 logits [batch, seq, vocab] (with `head=False` the final
    hidden states, for the chunked loss); given a `KVCache`, the
    chunk attends the cache too and (logits, updated cache) is returned."""

    def __init__(
        self,
        cfg: GPT2Config,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        self.remat = remat
        emb = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, init_std=cfg.initializer_range)
        self.wte = Embed(cfg.vocab_size, cfg.n_embd, axes=("vocab", "embed"), **emb)
        self.wpe = Embed(cfg.n_positions, cfg.n_embd, axes=(None, "embed"), **emb)
        self.h = nnx.List([Block(cfg, i, dtype, param_dtype, rngs) for i in range(cfg.n_layer)])
        self.ln_f = LayerNorm(
            cfg.n_embd, eps=cfg.layer_norm_epsilon, affine=True, param_dtype=param_dtype
        )

    def init_cache(self, batch: int, max_len: int) -> kv_cache.KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` tokens."""
        c = self.cfg
        return kv_cache.KVCache.init(
            batch=batch,
            max_len=max_len,
            num_layers=c.n_layer,
            kv_heads=c.n_head,
            head_dim=c.n_embd // c.n_head,
            dtype=self.wte.dtype,
        )

    @property
    def blocks(self) -> nnx.List:
        """The transformer blocks, each called as block(x, *layer_args, kv) -> (x, kv)."""
        return self.h

    def layer_inputs(self, input_ids: jax.Array) -> tuple[jax.Array, tuple]:
        """(the first block's input, the other arguments every block takes) for whole
        unpadded sequences: what layer-by-layer calibration starts from."""
        _, positions, allowed = kv_cache.begin(None, input_ids, None, None, None)
        return self.wte(input_ids) + self.wpe(positions), (allowed,)

    def output_kernel(self) -> jax.Array:
        """The output layer as an [embed, vocab] kernel (`layers.output_kernel`)."""
        return output_kernel(self.wte, None)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: kv_cache.KVCache | None = None,
        head: bool = True,
    ) -> jax.Array | tuple[jax.Array, kv_cache.KVCache]:
        cache, positions, allowed = kv_cache.begin(
            cache, input_ids, attention_mask, positions, segment_ids
        )
        x = self.wte(input_ids) + self.wpe(positions)
        kvs, per_layer = [], kv_cache.per_layer(cache, len(self.h))
        for block, kv in zip(self.h, per_layer, strict=True):
            x, kv = call_layer(block, self.remat, x, allowed, kv)
            kvs.append(kv)
        x = self.ln_f(x)
        if not head:
            return x
        logits = self.wte.attend(x).astype(jnp.float32)
        return kv_cache.finish(cache, logits, kvs, input_ids.shape[1])
