"""The model a structured cut ships: `interop.pruning.shrink` against `transformers`.

For every tiny family, rows (FFN neurons) at 50% and heads at 1/2 are cut from random
weights; the shrunk checkpoint must load in `transformers`, give the logits of the dense
model with the same zeros, and be smaller by exactly the removed structures' entries.
Where a standard config cannot express the cut (heads in OPT and GPT-2, layers keeping
different counts), the export stays dense with zeros and says why.
"""

import json

import numpy as np
import pytest
import torch
import transformers

from interop.checkpoints.hf import SAFETENSORS, HFCheckpointReader, read_hf_config
from interop.checkpoints.hf_write import write_hf_checkpoint
from interop.config_files import load_config
from interop.pruning.masks import Pruner
from interop.pruning.shrink import masked, pruning_report, shrink
from interop.tiny_configs import tiny_config

FAMILIES = ("tiny-llama", "tiny-qwen2", "tiny-opt", "tiny-gpt2")
HIDDEN, LAYERS, FFN, HEAD_DIM = 64, 2, 128, 16  # the tiny configs' sizes


def removed_parameters(family: str, pattern: str) -> int:
    """Entries a 50% rows / 1/2 heads cut removes, from the tiny configs' shapes."""
    if pattern == "rows":
        inner = 4 * HIDDEN if family == "tiny-gpt2" else FFN
        gone = inner // 2
        if family in ("tiny-llama", "tiny-qwen2"):
            return LAYERS * 3 * HIDDEN * gone  # gate and up rows, down columns
        return LAYERS * (2 * HIDDEN * gone + gone)  # fc1 rows and bias, fc2 columns
    if family in ("tiny-opt", "tiny-gpt2"):
        return 0
    # One of two KV groups: 2 query heads, 1 key and 1 value head, 2 heads of o_proj.
    weights = (2 + 1 + 1 + 2) * HEAD_DIM * HIDDEN
    biases = (2 + 1 + 1) * HEAD_DIM if family == "tiny-qwen2" else 0
    return LAYERS * (weights + biases)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each family with random weights (biases and norms too), saved by transformers."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for seed, family in enumerate(FAMILIES):
        cfg = tiny_config(family)
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                base = 1.0 if "norm" in name or ".ln_" in name else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape))
        model.save_pretrained(root / family)
        out[family] = root / family
    return out


def load(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    return model.eval()


def logits(model) -> np.ndarray:
    ids = torch.from_numpy(np.random.default_rng(0).integers(3, 512, (3, 24)))
    with torch.no_grad():
        return model(input_ids=ids).logits.numpy()


def cut(src, overrides):
    """(hf config, tensors, pruner, masks) of a one-shot cut of the checkpoint at `src`."""
    hf_config = read_hf_config(src)
    with HFCheckpointReader(src) as reader:
        tensors = dict(reader)
    prune = load_config(None, overrides).prune
    pruner = Pruner(prune, hf_config, {n: a.shape for n, a in tensors.items()})
    return hf_config, tensors, pruner, pruner.cut(0, tensors, pruner.initial_masks())


def export(dst, config, tensors, src):
    dst.mkdir()
    write_hf_checkpoint(dst, tensors.items(), config, tokenizer_src=src)
    return dst


@pytest.mark.parametrize("pattern", ["rows", "heads"])
@pytest.mark.parametrize("family", FAMILIES)
def test_shrunk_model_equals_the_masked_dense_one(checkpoints, tmp_path, family, pattern):
    src = checkpoints[family]
    hf_config, tensors, pruner, masks = cut(src, [f"prune.pattern={pattern}", "prune.sparsity=0.5"])
    dense = export(tmp_path / "dense", hf_config, masked(tensors, masks), src)
    config, small, notes = shrink(hf_config, tensors, pruner, masks)
    shrunk = export(tmp_path / "shrunk", config, small, src)

    dense_model, shrunk_model = load(dense), load(shrunk)
    expected = removed_parameters(family, pattern)
    assert dense_model.num_parameters() - shrunk_model.num_parameters() == expected
    diff = np.abs(logits(dense_model) - logits(shrunk_model)).max()
    assert diff <= 1e-5, diff
    assert np.abs(logits(load(src)) - logits(dense_model)).max() > 1e-2  # the cut did cut
    dense_bytes, shrunk_bytes = ((d / SAFETENSORS).stat().st_size for d in (dense, shrunk))
    if expected:
        assert not notes and shrunk_bytes < dense_bytes
    else:
        assert config == hf_config and shrunk_bytes == dense_bytes
        assert len(notes) == 1 and notes[0].startswith("heads: ")
        assert "head width from hidden_size / heads" in notes[0]


def test_shrunk_config_states_the_kept_sizes(checkpoints):
    llama = checkpoints["tiny-llama"]
    hf_config, tensors, pruner, masks = cut(llama, ["prune.pattern=heads", "prune.sparsity=0.5"])
    config, _, _ = shrink(hf_config, tensors, pruner, masks)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
    assert config["head_dim"] == HEAD_DIM and config["hidden_size"] == HIDDEN
    hf_config, tensors, pruner, masks = cut(llama, ["prune.pattern=rows", "prune.sparsity=0.25"])
    assert shrink(hf_config, tensors, pruner, masks)[0]["intermediate_size"] == 96
    gpt2 = checkpoints["tiny-gpt2"]
    hf_config, tensors, pruner, masks = cut(gpt2, ["prune.pattern=rows", "prune.sparsity=0.5"])
    assert shrink(hf_config, tensors, pruner, masks)[0]["n_inner"] == 128


def test_layers_keeping_different_counts_stay_dense(checkpoints, tmp_path):
    src = checkpoints["tiny-llama"]
    overrides = ["prune.pattern=rows", "prune.sparsity=0.5", "prune.modules=[layers\\.0\\.]"]
    hf_config, tensors, pruner, masks = cut(src, overrides)
    config, small, notes = shrink(hf_config, tensors, pruner, masks)
    assert config == hf_config
    assert all(small[n].shape == tensors[n].shape for n in tensors)
    assert len(notes) == 1 and "layers keep different counts" in notes[0]
    assert "model.layers.0.mlp 64, model.layers.1.mlp 128" in notes[0]
    dense = export(tmp_path / "dense", hf_config, masked(tensors, masks), src)
    same = export(tmp_path / "same", config, small, src)
    assert np.array_equal(logits(load(dense)), logits(load(same)))


def test_report_lists_rules_sparsity_and_kept_items(checkpoints, tmp_path):
    hf_config, tensors, pruner, masks = cut(
        checkpoints["tiny-qwen2"], ["prune.pattern=heads", "prune.sparsity=0.5"]
    )
    report = pruning_report(pruner, masks, shrunk=True, extra={"model": "m"})
    report = json.loads(json.dumps(report))  # what pruning.json holds
    assert report["shrunk"] is True and report["model"] == "m" and report["notes"] == []
    assert report["rules"][0]["pattern"] == "heads" and report["rules"][0]["sparsity"] == 0.5
    q = report["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    assert q == {"size": 64 * 64, "zeros": 32 * 64, "sparsity": 0.5}
    block = report["structures"]["model.layers.1.self_attn"]
    assert block["items"] == 2 and block["heads_per_item"] == 2 and len(block["kept"]) == 1
