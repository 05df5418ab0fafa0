"""Shared set-up for trainer tests: a tiny base (tokenizer + random Llama) and configs."""

from __future__ import annotations

from pathlib import Path

from interop.config import RunConfig
from interop.config_files import dump_config

DEMO_DATA = Path(__file__).resolve().parents[1] / "configs" / "data" / "demo_sft"


def run_config(base: Path, out: Path, **sections) -> RunConfig:
    """A small fp32 run on the demo SFT data, from the base model in `base`."""
    data = {
        "model": {"path": str(base)},
        "data": {
            "sources": [{"path": str(DEMO_DATA / "train.jsonl")}],
            "eval_sources": [{"path": str(DEMO_DATA / "eval.jsonl")}],
            "max_seq_len": 64,
        },
        "train": {"output_dir": str(out), "micro_batch_size": 4, "max_steps": 4, "log_every": 1},
        "optim": {"learning_rate": 1e-3},
        "schedule": {"type": "linear", "warmup_steps": 1},
        "logging": {"progress_bar": False},
        "parallel": {"data": 1},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return RunConfig.model_validate(data)


def write_config(tmp_path: Path, cfg: RunConfig) -> Path:
    """`cfg` as a YAML file a command line can take."""
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    return path


def micro_batch(ids) -> dict:
    """A micro-batch of the token ids `ids` [batch, seq], every position attended and
    scored."""
    import jax.numpy as jnp

    ids = jnp.asarray(ids)
    return {
        "input_ids": ids,
        "attention_mask": jnp.ones_like(ids),
        "positions": None,
        "segment_ids": None,
        "labels": ids,
    }


def zero_micro_batch(batch: int, seq: int) -> dict:
    """A micro-batch of token 0 everywhere: what a compile-only memory figure needs (the
    values never matter there)."""
    import numpy as np

    return micro_batch(np.zeros((batch, seq), np.int32))
