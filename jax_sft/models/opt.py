"""OPT (the DeepSpeed-Chat family) as a Flax NNX model.

OPT's quirks, all from its HF implementation: learned positions are looked up at
`position + 2`; OPT-350m is post-LN (`do_layer_norm_before: false`) and has no final
norm; when `word_embed_proj_dim != hidden_size` the embeddings live in the smaller space
and `project_in`/`project_out` map to and from the model width; q is scaled before q.k.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from interop.errors import UserError
from jax_sft.models import kv_cache
from jax_sft.models.hf_names import TRANSPOSE, NameTable, Rule
from jax_sft.models.layers import ACTIVATIONS, Embed, LayerNorm, Linear, output_kernel
from jax_sft.models.stacked import decoder_layers, run_layers

MODEL_TYPES = ("opt",)
SCANS = True  # its decoder layers can be stacked and scanned (`models.stacked`)
POSITION_OFFSET = 2
LN_EPS = 1e-5


@dataclass(frozen=True)
class OPTConfig:
    vocab_size: int
    hidden_size: int
    ffn_dim: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    word_embed_proj_dim: int
    do_layer_norm_before: bool
    final_layer_norm: bool
    layer_norm_affine: bool
    enable_bias: bool
    activation: str
    tie_word_embeddings: bool
    init_std: float

    @classmethod
    def from_hf(cls, hf: dict) -> OPTConfig:
        act = hf.get("activation_function", "relu")
        if act not in ACTIVATIONS:
            raise UserError(f"config.json: activation_function '{act}' is not supported")
        pre_ln = bool(hf.get("do_layer_norm_before", True))
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            ffn_dim=hf["ffn_dim"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            max_position_embeddings=hf["max_position_embeddings"],
            word_embed_proj_dim=hf.get("word_embed_proj_dim") or hf["hidden_size"],
            do_layer_norm_before=pre_ln,
            final_layer_norm=pre_ln and not hf.get("_remove_final_layer_norm", False),
            layer_norm_affine=bool(hf.get("layer_norm_elementwise_affine", True)),
            enable_bias=bool(hf.get("enable_bias", True)),
            activation=act,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            init_std=hf.get("init_std", 0.02),
        )

    @property
    def projects(self) -> bool:
        return self.word_embed_proj_dim != self.hidden_size


def name_table(cfg: OPTConfig) -> NameTable:
    """Our parameter paths <-> HF `OPTForCausalLM` names."""
    dec, layer = "model.decoder.", "model.decoder.layers.{i}."
    rules = [
        Rule("embed_tokens.embedding", f"{dec}embed_tokens.weight"),
        Rule("embed_positions.embedding", f"{dec}embed_positions.weight"),
        Rule("project_in.kernel", f"{dec}project_in.weight", TRANSPOSE),
        Rule("project_out.kernel", f"{dec}project_out.weight", TRANSPOSE),
        Rule("final_layer_norm.scale", f"{dec}final_layer_norm.weight"),
        Rule("final_layer_norm.bias", f"{dec}final_layer_norm.bias"),
        Rule("lm_head.kernel", "lm_head.weight", TRANSPOSE),
    ]
    for ln in ("self_attn_layer_norm", "final_layer_norm"):
        rules.append(Rule(f"layers.{{i}}.{ln}.scale", f"{layer}{ln}.weight"))
        rules.append(Rule(f"layers.{{i}}.{ln}.bias", f"{layer}{ln}.bias"))
    for proj in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "fc1",
        "fc2",
    ):
        rules.append(Rule(f"layers.{{i}}.{proj}.kernel", f"{layer}{proj}.weight", TRANSPOSE))
        rules.append(Rule(f"layers.{{i}}.{proj}.bias", f"{layer}{proj}.bias"))
    ignored = ("lm_head.weight",) if cfg.tie_word_embeddings else ()
    return NameTable(tuple(rules), base_prefix="model.", ignored=ignored)


class Attention(nnx.Module):
    def __init__(self, cfg: OPTConfig, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        e = cfg.hidden_size
        kw = dict(
            use_bias=cfg.enable_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            init_std=cfg.init_std,
        )
        self.q_proj = Linear(e, e, axes=("embed", "heads"), **kw)
        self.k_proj = Linear(e, e, axes=("embed", "heads"), **kw)
        self.v_proj = Linear(e, e, axes=("embed", "heads"), **kw)
        self.out_proj = Linear(e, e, axes=("heads", "embed"), **kw)
        self.num_heads = cfg.num_heads

    def __call__(
        self, x: jax.Array, allowed: jax.Array, kv: kv_cache.LayerKV | None
    ) -> tuple[jax.Array, kv_cache.LayerKV | None]:
        b, s, e = x.shape
        h = self.num_heads
        d = e // h
        q = (self.q_proj(x) * d**-0.5).reshape(b, s, h, d)
        k = self.k_proj(x).reshape(b, s, h, d)
        v = self.v_proj(x).reshape(b, s, h, d)
        out, kv = kv_cache.attend(q, k, v, allowed, 1.0, kv)
        return self.out_proj(out.reshape(b, s, e)), kv


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: OPTConfig, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        e = cfg.hidden_size
        ln = dict(eps=LN_EPS, affine=cfg.layer_norm_affine, param_dtype=param_dtype)
        kw = dict(
            use_bias=cfg.enable_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            init_std=cfg.init_std,
        )
        self.self_attn_layer_norm = LayerNorm(e, **ln)
        self.self_attn = Attention(cfg, dtype, param_dtype, rngs)
        self.final_layer_norm = LayerNorm(e, **ln)
        self.fc1 = Linear(e, cfg.ffn_dim, axes=("embed", "mlp"), **kw)
        self.fc2 = Linear(cfg.ffn_dim, e, axes=("mlp", "embed"), **kw)
        self.act = ACTIVATIONS[cfg.activation]
        self.pre_ln = cfg.do_layer_norm_before

    def __call__(
        self, x: jax.Array, allowed: jax.Array, kv: kv_cache.LayerKV | None
    ) -> tuple[jax.Array, kv_cache.LayerKV | None]:
        mlp = lambda h: self.fc2(self.act(self.fc1(h)))  # noqa: E731
        if self.pre_ln:
            h, kv = self.self_attn(self.self_attn_layer_norm(x), allowed, kv)
            x = x + h
            return x + mlp(self.final_layer_norm(x)), kv
        h, kv = self.self_attn(x, allowed, kv)
        x = self.self_attn_layer_norm(x + h)
        return self.final_layer_norm(x + mlp(x)), kv


class OPT(nnx.Module):
    """Causal LM: token ids -> fp32 logits [batch, seq, vocab] (with `head=False` the final
    hidden states, for the chunked loss); given a `KVCache`, the
    chunk attends the cache too and (logits, updated cache) is returned."""

    def __init__(
        self,
        cfg: OPTConfig,
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
        e, p = cfg.hidden_size, cfg.word_embed_proj_dim
        emb = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, init_std=cfg.init_std)
        lin = dict(use_bias=False, **emb)
        self.embed_tokens = Embed(cfg.vocab_size, p, axes=("vocab", "embed"), **emb)
        self.embed_positions = Embed(
            cfg.max_position_embeddings + POSITION_OFFSET, e, axes=(None, "embed"), **emb
        )
        self.project_in = Linear(p, e, axes=(None, "embed"), **lin) if cfg.projects else None
        self.project_out = Linear(e, p, axes=("embed", None), **lin) if cfg.projects else None
        self.layers = decoder_layers(
            [DecoderLayer(cfg, dtype, param_dtype, rngs) for _ in range(cfg.num_layers)],
            scan_layers,
        )
        self.final_layer_norm = (
            LayerNorm(e, eps=LN_EPS, affine=cfg.layer_norm_affine, param_dtype=param_dtype)
            if cfg.final_layer_norm
            else None
        )
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(p, cfg.vocab_size, axes=("embed", "vocab"), **lin)
        )

    def init_cache(self, batch: int, max_len: int) -> kv_cache.KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` tokens."""
        c = self.cfg
        return kv_cache.KVCache.init(
            batch=batch,
            max_len=max_len,
            num_layers=c.num_layers,
            kv_heads=c.num_heads,
            head_dim=c.hidden_size // c.num_heads,
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
        return self._embed(input_ids, positions), (allowed,)

    def _embed(self, input_ids: jax.Array, positions: jax.Array) -> jax.Array:
        x = self.embed_tokens(input_ids)
        if self.project_in is not None:
            x = self.project_in(x)
        return x + self.embed_positions(positions + POSITION_OFFSET)

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
        cache, positions, allowed = kv_cache.begin(
            cache, input_ids, attention_mask, positions, segment_ids
        )
        x = self._embed(input_ids, positions)
        x, kvs = run_layers(
            self.layers,
            self.scan_layers,
            self.remat,
            x,
            (allowed,),
            kv_cache.per_layer(cache, self.cfg.num_layers),
        )
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        if not head:
            return x
        logits = self.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x)
        return kv_cache.finish(cache, logits.astype(jnp.float32), kvs, input_ids.shape[1])
