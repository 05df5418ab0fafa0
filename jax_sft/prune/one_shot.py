"""The calibrated methods of `jax-sft prune` (Wanda, SparseGPT) on Hugging Face tensors.

The one-shot command works on HF names and layouts in NumPy; these methods need the
model's activations, so the tensors become one of our models for the calibration pass
(`calibrate.prune_model`) and its masks (and SparseGPT's repaired weights) go back to
HF names and layouts for the command to write.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from interop.config import DataSource
from interop.data.examples import make_examples
from interop.data.sources import read_source
from interop.data.tokenizer import load_tokenizer
from interop.prune_config import n_of_m
from interop.pruning.masks import Pruner
from jax_sft.models import registry
from jax_sft.models.hf_names import hf_to_ours
from jax_sft.prune.calibrate import prune_model, windows


def calibration_ids(model_dir: Path, args: argparse.Namespace) -> np.ndarray:
    """The calibration sequences [n, --max-seq-len] from --data, in the model's tokens."""
    rows = read_source(DataSource(path=args.data))
    examples = make_examples(
        rows, load_tokenizer(model_dir), "", max_seq_len=args.max_seq_len, loss_on="all"
    )
    streams = [e.input_ids for e in examples]
    return windows(streams, args.max_seq_len, args.calibration_samples, args.data, "--max-seq-len")


def calibrated_cut(
    model_dir: Path,
    hf_config: dict,
    tensors: dict[str, np.ndarray],
    pruner: Pruner,
    args: argparse.Namespace,
) -> dict[str, np.ndarray]:
    """The masks (HF names and layouts, True = kept) of --method wanda or sparsegpt;
    SparseGPT's repaired weights replace theirs in `tensors`, in their own dtype."""
    ids = calibration_ids(model_dir, args)
    table = registry.name_table(hf_config)
    expected = registry.expected_shapes(hf_config)
    model = registry.model_from_flat(
        hf_config, hf_to_ours(table, tensors.items(), expected, str(model_dir))
    )
    path_of = {table.to_hf_name(path)[0]: path for path in registry.flat_state(model)}
    n_m = n_of_m(args.pattern)
    sparsity = None if n_m else pruner.cfg.rules[0].sparsity
    masks = prune_model(
        model, ids, {path_of[n] for n in pruner.targets}, args.method, sparsity=sparsity, n_m=n_m
    )
    state = registry.flat_state(model)
    out = {}
    for path, mask in masks.items():
        name, transform = table.to_hf_name(path)
        out[name] = transform.to_hf(mask)
        if args.method == "sparsegpt":
            tensors[name] = transform.to_hf(np.asarray(state[path])).astype(tensors[name].dtype)
    return out
