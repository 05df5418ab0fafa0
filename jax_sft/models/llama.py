"""Llama 2/3, Qwen2 and Mistral as one Flax NNX family.

The three differ only in config: Qwen2 adds biases to q/k/v, Llama's `attention_bias`
adds them to o_proj too, Mistral may set an explicit `head_dim` and a sliding window.
RoPE (incl. llama3 scaling), grouped-query attention, RMSNorm and a SwiGLU MLP are common.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from interop.errors import UserError
from jax_sft.models import kv_cache
from jax_sft.models.hf_names import TRANSPOSE, NameTable, Rule
from jax_sft.models.layers import ACTIVATIONS, Embed, Linear, RMSNorm, output_kernel
from jax_sft.models.rope import apply_rope, inverse_frequencies, rope_parameters, rope_table
from jax_sft.models.stacked import decoder_layers, run_layers

MODEL_TYPES = ("llama", "qwen2", "mistral")
SCANS = True  # its decoder layers can be stacked and scanned (`models.stacked`)

Rope = tuple[jax.Array, jax.Array]


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: tuple[tuple[str, object], ...]
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    hidden_act: str
    sliding_window: int | None
    initializer_range: float

    @classmethod
    def from_hf(cls, hf: dict) -> LlamaConfig:
        kind = hf["model_type"]
        heads = hf["num_attention_heads"]
        attention_bias = bool(hf.get("attention_bias", False))
        window = hf.get("sliding_window")
        if kind == "qwen2" and not hf.get("use_sliding_window", False):
            window = None
        if hf.get("hidden_act", "silu") not in ACTIVATIONS:
            raise UserError(f"config.json: hidden_act '{hf['hidden_act']}' is not supported")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope=tuple(sorted(rope_parameters(hf).items())),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=kind == "qwen2" or attention_bias,
            o_bias=attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            hidden_act=hf.get("hidden_act", "silu"),
            sliding_window=window,
            initializer_range=hf.get("initializer_range", 0.02),
        )


def name_table(cfg: LlamaConfig) -> NameTable:
    """Our parameter paths <-> HF `LlamaForCausalLM`-style names."""
    layer = "model.layers.{i}."
    rules = [Rule("embed_tokens.embedding", "model.embed_tokens.weight")]
    for ln in ("input_layernorm", "post_attention_layernorm"):
        rules.append(Rule(f"layers.{{i}}.{ln}.scale", f"{layer}{ln}.weight"))
    for block, projs in (("self_attn", ("q", "k", "v", "o")), ("mlp", ("gate", "up", "down"))):
        for p in projs:
            ours, hf = f"layers.{{i}}.{block}.{p}_proj", f"{layer}{block}.{p}_proj"
            rules.append(Rule(f"{ours}.kernel", f"{hf}.weight", TRANSPOSE))
            rules.append(Rule(f"{ours}.bias", f"{hf}.bias"))
    rules += [
        Rule("norm.scale", "model.norm.weight"),
        Rule("lm_head.kernel", "lm_head.weight", TRANSPOSE),
    ]
    ignored = [r".*rotary_emb\.inv_freq"] + (["lm_head.weight"] if cfg.tie_word_embeddings else [])
    return NameTable(tuple(rules), base_prefix="model.", ignored=tuple(ignored))


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, init_std=cfg.initializer_range)
        e, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = Linear(
            e, cfg.num_heads * d, axes=("embed", "heads"), use_bias=cfg.qkv_bias, **kw
        )
        self.k_proj = Linear(
            e, cfg.num_kv_heads * d, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw
        )
        self.v_proj = Linear(
            e, cfg.num_kv_heads * d, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw
        )
        self.o_proj = Linear(
            cfg.num_heads * d, e, axes=("heads", "embed"), use_bias=cfg.o_bias, **kw
        )
        self.cfg = cfg

    def __call__(
        self, x: jax.Array, rope: Rope, allowed: jax.Array, kv: kv_cache.LayerKV | None
    ) -> tuple[jax.Array, kv_cache.LayerKV | None]:
        b, s, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).reshape(b, s, c.num_heads, c.head_dim)
        k = self.k_proj(x).reshape(b, s, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).reshape(b, s, c.num_kv_heads, c.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        out, kv = kv_cache.attend(q, k, v, allowed, c.head_dim**-0.5, kv)
        return self.o_proj(out.reshape(b, s, c.num_heads * c.head_dim)), kv


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, init_std=cfg.initializer_range)
        e, m, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = Linear(e, m, axes=("embed", "mlp"), use_bias=bias, **kw)
        self.up_proj = Linear(e, m, axes=("embed", "mlp"), use_bias=bias, **kw)
        self.down_proj = Linear(m, e, axes=("mlp", "embed"), use_bias=bias, **kw)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.silu = cfg.hidden_act == "silu"

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = self.gate_proj(x), self.up_proj(x)
        return (
            self.down_proj.silu_gated(gate, up)
            if self.silu
            else self.down_proj(self.act(gate) * up)
        )


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(
            cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype
        )
        self.self_attn = Attention(cfg, dtype, param_dtype, rngs)
        self.post_attention_layernorm = RMSNorm(
            cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype
        )
        self.mlp = MLP(cfg, dtype, param_dtype, rngs)

    def __call__(
        self, x: jax.Array, rope: Rope, allowed: jax.Array, kv: kv_cache.LayerKV | None
    ) -> tuple[jax.Array, kv_cache.LayerKV | None]:
        h, kv = self.self_attn(self.input_layernorm(x), rope, allowed, kv)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class Llama(nnx.Module):
    """Causal LM: token ids -> fp32 logits [batch, seq, vocab] (with `head=False` the final
    hidden states, for the chunked loss); given a `KVCache`, the
    chunk attends the cache too and (logits, updated cache) is returned."""

    def __init__(
        self,
        cfg: LlamaConfig,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        self.remat = remat
        self.scan_layers = scan_layers
        self.embed_tokens = Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            axes=("vocab", "embed"),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            init_std=cfg.initializer_range,
        )
        self.layers = decoder_layers(
            [DecoderLayer(cfg, dtype, param_dtype, rngs) for _ in range(cfg.num_layers)],
            scan_layers,
        )
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(
                cfg.hidden_size,
                cfg.vocab_size,
                axes=("embed", "vocab"),
                use_bias=False,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
                init_std=cfg.initializer_range,
            )
        )

    def init_cache(self, batch: int, max_len: int) -> kv_cache.KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` tokens."""
        c = self.cfg
        return kv_cache.KVCache.init(
            batch=batch,
            max_len=max_len,
            num_layers=c.num_layers,
            kv_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            dtype=self.embed_tokens.dtype,
        )

    @property
    def blocks(self) -> nnx.List:
        """The decoder layers, each called as layer(x, *layer_args, kv) -> (x, kv)."""
        return self.layers

    def layer_inputs(self, input_ids: jax.Array) -> tuple[jax.Array, tuple]:
        """(the first layer's input, the other arguments every layer takes) for whole
        unpadded sequences: what layer-by-layer calibration starts from."""
        _, positions, allowed = kv_cache.begin(None, input_ids, None, None, None)
        return self.embed_tokens(input_ids), (self._rope(positions), allowed)

    def _rope(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        return rope_table(positions, inverse_frequencies(self.cfg.head_dim, dict(self.cfg.rope)))

    def output_kernel(self) -> jax.Array:
        """The output layer as an [embed, vocab] kernel (`layers.output_kernel`)."""
        return output_kernel(self.embed_tokens, self.lm_head)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: kv_cache.KVCache | None = None,
        head: bool = True,
    ) -> jax.Array | tuple[jax.Array, kv_cache.KVCache]:
        seq = input_ids.shape[1] if cache is None else cache.max_len
        if self.cfg.sliding_window is not None and seq > self.cfg.sliding_window:
            raise UserError(
                f"sequence length {seq} exceeds the model's sliding_window "
                f"{self.cfg.sliding_window}; sliding-window attention is not supported"
            )
        cache, positions, allowed = kv_cache.begin(
            cache, input_ids, attention_mask, positions, segment_ids
        )
        x = self.embed_tokens(input_ids)
        rope = self._rope(positions)
        x, kvs = run_layers(
            self.layers,
            self.scan_layers,
            self.remat,
            x,
            (rope, allowed),
            kv_cache.per_layer(cache, self.cfg.num_layers),
        )
        x = self.norm(x)
        if not head:
            return x
        logits = self.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x)
        return kv_cache.finish(cache, logits.astype(jnp.float32), kvs, input_ids.shape[1])
