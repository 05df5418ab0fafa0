"""The prunable structures of each model family, in Hugging Face names and layouts.

A structure is what one ranked item spans across several tensors: an FFN neuron is a
row of the up/gate projections (and of their bias) plus a column of the down projection;
an attention head is a block of rows of the query/key/value projections plus a block of
columns of the output projection. With grouped-query attention one item is a whole KV
group (a key/value head and the query heads that read it), so a cut model is still a
valid model. A `Member` says where item i lies in one tensor: along `axis`, a run of
`block` indices, repeated in each of `segments` equal parts (GPT-2's fused q/k/v).
Both backends read this table, so they cut the same entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from interop.errors import UserError

WB = ("weight", "bias")


@dataclass(frozen=True)
class Member:
    name: str  # the HF tensor
    axis: int
    block: int = 1
    segments: int = 1

    def expand(self, keep: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor's bool mask from the items' keep flags."""
        line = self.line(keep)
        if line.size != shape[self.axis]:
            raise ValueError(f"{self.name}: {line.size} indices along axis {self.axis}, {shape}")
        view = [1] * len(shape)
        view[self.axis] = line.size
        return np.broadcast_to(line.reshape(view), shape).copy()

    def line(self, keep: np.ndarray) -> np.ndarray:
        """The flags of the indices along `axis`, from the items' flags."""
        return np.tile(np.repeat(keep, self.block), self.segments)

    def item_sums(self, values: np.ndarray, items: int) -> np.ndarray:
        """Sum of `values` (the tensor's shape) over each item's entries."""
        moved = np.moveaxis(values, self.axis, 0)
        return moved.reshape(self.segments, items, self.block, -1).sum(axis=(0, 2, 3))

    def cut(self, values: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """The tensor with the pruned items' indices removed along `axis`."""
        return np.compress(self.line(keep), values, axis=self.axis)


@dataclass(frozen=True)
class Block:
    """One FFN or attention block: `module` names it, `items` neurons or KV groups."""

    module: str
    kind: str  # "rows" | "heads"
    items: int
    members: tuple[Member, ...]
    heads_per_item: int = 1  # query heads per item (heads blocks)


def _f(shape_of: Mapping[str, tuple], members: list[Member]) -> tuple[Member, ...]:
    """The members whose tensor the model has (biases are optional in some families)."""
    return tuple(m for m in members if m.name in shape_of)


def blocks(hf_config: Mapping, shapes: Mapping[str, tuple]) -> list[Block]:
    """Every FFN and attention block of the model (`shapes`: its HF tensors)."""
    kind = hf_config["model_type"]
    if kind in ("llama", "qwen2", "mistral"):
        return _llama(hf_config, shapes)
    if kind == "opt":
        return _opt(hf_config, shapes)
    if kind == "gpt2":
        return _gpt2(hf_config, shapes)
    raise UserError(f"prune: no structure table for model_type '{kind}'")


def linear_weights(hf_config: Mapping, shapes: Mapping[str, tuple]) -> list[str]:
    """The 2-D weights of the blocks' linear layers: what unstructured pruning may target
    (embeddings, norms and the output head never)."""
    names = {m.name for b in blocks(hf_config, shapes) for m in b.members}
    return [n for n in shapes if n in names and n.endswith(".weight") and len(shapes[n]) == 2]


def input_axis(hf_config: Mapping, name: str) -> int:
    """The axis of a linear weight that runs over its inputs: 1 for `nn.Linear`'s
    [out, in], 0 for GPT-2's Conv1D [in, out]."""
    return 0 if hf_config["model_type"] == "gpt2" else 1


def _llama(c: Mapping, shapes: Mapping[str, tuple]) -> list[Block]:
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    hd = c.get("head_dim") or c["hidden_size"] // heads
    group = heads // kv
    out = []
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        mlp = [
            Member(f"{p}mlp.{n}_proj.{t}", 0) for n in ("gate", "up") for t in ("weight", "bias")
        ]
        mlp.append(Member(f"{p}mlp.down_proj.weight", 1))
        out.append(Block(f"{p}mlp", "rows", c["intermediate_size"], _f(shapes, mlp)))
        att = [Member(f"{p}self_attn.q_proj.{t}", 0, group * hd) for t in WB]
        att += [
            Member(f"{p}self_attn.{n}_proj.{t}", 0, hd) for n in "kv" for t in ("weight", "bias")
        ]
        att.append(Member(f"{p}self_attn.o_proj.weight", 1, group * hd))
        out.append(Block(f"{p}self_attn", "heads", kv, _f(shapes, att), group))
    return out


def _opt(c: Mapping, shapes: Mapping[str, tuple]) -> list[Block]:
    heads = c["num_attention_heads"]
    hd = c["hidden_size"] // heads
    out = []
    for i in range(c["num_hidden_layers"]):
        p = f"model.decoder.layers.{i}."
        mlp = [Member(f"{p}fc1.weight", 0), Member(f"{p}fc1.bias", 0), Member(f"{p}fc2.weight", 1)]
        out.append(Block(f"{p}fc", "rows", c["ffn_dim"], _f(shapes, mlp)))
        att = [
            Member(f"{p}self_attn.{n}_proj.{t}", 0, hd) for n in "qkv" for t in ("weight", "bias")
        ]
        att.append(Member(f"{p}self_attn.out_proj.weight", 1, hd))
        out.append(Block(f"{p}self_attn", "heads", heads, _f(shapes, att)))
    return out


def _gpt2(c: Mapping, shapes: Mapping[str, tuple]) -> list[Block]:
    """GPT-2's Conv1D weights are [in, out]: rows and columns swap against Linear."""
    heads, e = c["n_head"], c["n_embd"]
    hd = e // heads
    out = []
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        mlp = [
            Member(f"{p}mlp.c_fc.weight", 1),
            Member(f"{p}mlp.c_fc.bias", 0),
            Member(f"{p}mlp.c_proj.weight", 0),
        ]
        out.append(Block(f"{p}mlp", "rows", c.get("n_inner") or 4 * e, _f(shapes, mlp)))
        att = [
            Member(f"{p}attn.c_attn.weight", 1, hd, 3),
            Member(f"{p}attn.c_attn.bias", 0, hd, 3),
            Member(f"{p}attn.c_proj.weight", 0, hd),
        ]
        out.append(Block(f"{p}attn", "heads", heads, _f(shapes, att)))
    return out
