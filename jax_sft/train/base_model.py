"""A base model for `model.tiny` runs: tokenizer and short pretraining, cached.

Nothing is downloaded: a byte-level BPE tokenizer is trained on the pretraining corpus
(by default the topic texts of Python's own `pydoc_data`), a tiny model is initialised
from its named config with the tokenizer's vocabulary, and, when `model.pretrain.steps`
> 0, trained on the packed corpus by the same engine as fine-tuning. The result is an
HF directory under `OUTPUT_DIR/base/`, reused while its recipe is unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from interop.checkpoints.hf import is_hf_dir
from interop.config import RunConfig
from interop.data.sources import utf8_text
from interop.data.tokenizer import load_tokenizer, pydoc_texts, train_tokenizer
from interop.errors import UserError
from interop.outputs import output_dir
from interop.tiny_configs import tiny_config
from interop.vocab import padded_vocab
from jax_sft.checkpoints.loading import write_checkpoint
from jax_sft.models import registry


def corpus_texts(corpus: str) -> list[str]:
    if corpus == "pydoc":
        return pydoc_texts()
    path = Path(corpus)
    if not path.is_file():
        raise UserError(f"model.pretrain.corpus: {corpus} is neither 'pydoc' nor a text file")
    return [t for t in utf8_text(path.read_bytes(), path).split("\n\n") if t.strip()]


def _recipe(cfg: RunConfig) -> dict:
    return {"tiny": cfg.model.tiny, "seed": cfg.train.seed, **cfg.model.pretrain.model_dump()}


def ensure_base(cfg: RunConfig) -> Path:
    """The HF directory (weights + tokenizer) of the run's tiny base model."""
    root = Path(cfg.train.output_dir) / "base"
    hf_dir, recipe_file = root / "hf", root / "recipe.json"
    recipe = _recipe(cfg)
    if (
        recipe_file.is_file()
        and json.loads(recipe_file.read_text()) == recipe
        and is_hf_dir(hf_dir)
    ):
        return hf_dir
    pre = cfg.model.pretrain
    texts = corpus_texts(pre.corpus)
    with output_dir(root / "tokenizer", overwrite=True) as tmp:
        train_tokenizer(texts, pre.vocab_size, tmp)
    tok = load_tokenizer(root / "tokenizer")
    config = tiny_config(cfg.model.tiny)
    config.update(
        vocab_size=padded_vocab(len(tok)),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = registry.build_model(config, seed=cfg.train.seed)
    flat = {k: np.asarray(v) for k, v in registry.flat_state(model).items()}
    init_dir = hf_dir if pre.steps == 0 else root / "init"
    with output_dir(init_dir, overwrite=True) as tmp:
        write_checkpoint(tmp, "hf", config, flat)
        tok.save_pretrained(tmp)
    if pre.steps > 0:
        _pretrain(cfg, root, init_dir, texts)
    recipe_file.write_text(json.dumps(recipe, indent=2) + "\n")
    return hf_dir


def _pretrain(cfg: RunConfig, root: Path, init_dir: Path, texts: list[str]) -> None:
    from jax_sft.train.engine import Engine

    pre = cfg.model.pretrain
    shutil.rmtree(root / "pretrain", ignore_errors=True)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    run = RunConfig.model_validate(
        {
            "model": {"path": str(init_dir), "dtype": cfg.model.dtype},
            "data": {
                "sources": [{"path": str(corpus), "format": "text"}],
                "packing": True,
                "max_seq_len": pre.seq_len,
                "loss_on": "all",
                "seed": cfg.train.seed,
            },
            "optim": {"learning_rate": pre.learning_rate, "weight_decay": 0.0},
            "schedule": {"type": "cosine", "warmup_steps": max(pre.steps // 10, 1)},
            "train": {
                "output_dir": str(root / "pretrain"),
                "max_steps": pre.steps,
                "micro_batch_size": pre.batch_size,
                "seed": cfg.train.seed,
                "log_every": max(pre.steps // 10, 1),
            },
            "logging": {"progress_bar": cfg.logging.progress_bar},
        }
    )
    engine = Engine(run, init_dir)
    engine.fit()
    engine.export_hf(root / "hf")
