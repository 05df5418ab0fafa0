"""Pruned fine-tuning on the JAX backend: the promised zeros, held through training,
checkpointed, exported (cut out for rows and heads), while the eval loss falls."""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from train_fixtures import run_config

from interop.checkpoints.hf import HFCheckpointReader
from interop.config_files import load_config
from interop.errors import UserError
from interop.probe import max_abs_logit_diff, probe_batch
from interop.pruning.masks import Pruner
from interop.tiny_configs import tiny_config
from jax_sft.core.trees import dotted
from jax_sft.models.logits import jax_logits
from jax_sft.train.run import make_engine, train
from torch_ref.logits import hf_logits

STEPS = 10
SCENARIOS = {
    "unstructured": {"pattern": "unstructured", "sparsity": 0.5},
    "gradual": {"pattern": "unstructured", "sparsity": 0.7, "end_step": 8, "every": 2},
    # Rows of the MLPs and attention heads cut in one run, which ships both smaller.
    "rows + heads": {
        "rules": [
            {"pattern": "rows", "sparsity": 0.5, "start_step": 2},
            {"pattern": "heads", "sparsity": 0.5, "start_step": 2},
        ]
    },
    "topk": {"method": "topk", "pattern": "unstructured", "sparsity": 0.5, "start_step": 2},
    "2:4": {"pattern": "2:4", "distill": "squarehead"},  # masks held with distillation on
    # Calibrated on parameters split over a 2-way tensor-parallel mesh, as the run holds them.
    "sparsegpt 2:4": {"method": "sparsegpt", "pattern": "2:4", "calibration_samples": 8},
}
PARALLEL = {"sparsegpt 2:4": {"tensor": 2, "zero_stage": 3}}


class _Runs(dict):
    """Scenario name -> (its config, its masks at every checkpoint, its final state), each
    trained when a test first asks for it: xdist may hand this module's tests to both
    workers, and each then trains only the scenarios its own tests read."""

    def __init__(self, base, tmp_path_factory):
        super().__init__()
        self.base, self.tmp = base, tmp_path_factory

    def __missing__(self, name):
        self[name] = _train(name, self.base, self.tmp)
        return self[name]


@pytest.fixture(scope="module")
def runs(tiny_base, tmp_path_factory):
    return _Runs(tiny_base, tmp_path_factory)


def _train(name, base, tmp_path_factory):
    rule = SCENARIOS[name]
    cfg = run_config(
        base,
        tmp_path_factory.mktemp(name) / "run",
        prune=rule,
        parallel=PARALLEL.get(name, {}),
        optim={"learning_rate": 3e-3, "weight_decay": 0.1},
        train={"max_steps": STEPS, "save_every": 2, "keep_checkpoints": 10, "eval_every": 5},
    )
    train(cfg)
    reader = make_engine(cfg)
    masks = {}
    for step in range(2, STEPS + 1, 2):
        reader.load_checkpoint(tag=str(step))
        masks[step] = reader.mode.host_masks(reader.state["masks"])
    final = reader.state
    if name == "rows + heads":  # the masked model, as the JAX forward sees it
        params = jax.device_get(jax.jit(reader.mode.params)(reader.state))
        masks["masked model"] = (reader.hf_config, dotted(params))
    if name == "topk":
        reader.load_checkpoint(tag="2")
        masks["scores at 2"] = jax.device_get(reader.state["scores"])
    reader.close()
    return cfg, masks, final


def _hf(directory):
    with HFCheckpointReader(directory) as reader:
        return dict(reader)


def _evals(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["eval_loss"] for r in lines if "eval_loss" in r]


def test_unstructured_masks_are_the_numpy_top_magnitudes_and_hold(runs, tiny_base):
    cfg, masks, state = runs["unstructured"]
    out = Path(cfg.train.output_dir)
    base, tuned = _hf(tiny_base), _hf(out / "hf")
    targets = [n for n in base if n.endswith("_proj.weight")]
    assert len(targets) == 14
    for name, w in tuned.items():
        zeros = int(np.sum(w == 0))
        if name in targets:
            # Exactly floor(0.5 n) zeros, where the base's smallest |W| were (stable order).
            order = np.argsort(-np.abs(base[name]).reshape(-1), kind="stable")
            want = np.zeros(w.size, bool)
            want[order[: w.size - w.size // 2]] = True
            assert np.array_equal((w != 0).reshape(-1), want), name
        else:
            assert zeros == int(np.sum(base[name] == 0)) == 0, name
    # The same mask at every checkpoint; Adam moments and stored weights zero there.
    first = masks[2]
    assert all(all(np.array_equal(m[p], first[p]) for p in first) for m in masks.values())
    params = dotted(jax.device_get(state["params"]))
    adam = state["opt_state"][1]
    for moments in (dotted(jax.device_get(adam.mu)), dotted(jax.device_get(adam.nu))):
        for p, mask in first.items():
            assert not np.any(moments[p][~mask]) and np.any(moments[p][mask]), p
    for p, mask in first.items():
        assert not np.any(params[p][~mask]), p
    evals = _evals(out)
    assert len(evals) == 3 and evals[-1] < evals[0]
    report = json.loads((out / "pruning.json").read_text())
    assert report["tensors"][targets[0]]["sparsity"] == 0.5
    assert "distill" not in (out / "metrics.jsonl").read_text()  # no distillation asked


def _two_of_four_by_magnitude(w: np.ndarray) -> np.ndarray:
    """Which entries of an [out, in] weight 2:4 magnitude pruning keeps: the 2 largest |W|
    of every 4 consecutive inputs (stable order), as [out x in / 4, 4]."""
    groups = np.abs(w).reshape(-1, 4)
    order = np.argsort(-groups, axis=1, kind="stable")
    keep = np.zeros(groups.shape, bool)
    np.put_along_axis(keep, order[:, :2], True, axis=1)
    return keep


def test_two_of_four_masks_keep_each_groups_largest_and_hold(runs, tiny_base):
    cfg, masks, _ = runs["2:4"]
    base, tuned = _hf(tiny_base), _hf(Path(cfg.train.output_dir) / "hf")
    targets = [n for n in base if n.endswith("_proj.weight")]
    for name in targets:
        kept = (tuned[name] != 0).reshape(-1, 4)
        assert np.array_equal(kept, _two_of_four_by_magnitude(base[name])), name
    assert all(np.all(tuned[n] != 0) for n in base if n not in targets)
    first = masks[2]
    assert all(all(np.array_equal(m[p], first[p]) for p in first) for m in masks.values())
    # Distilled from the dense model: the term is logged every step, nonzero once the
    # cut model differs from its teacher (a run without distillation logs none: above).
    out = Path(cfg.train.output_dir)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    terms = [r["distill"] for r in rows if "loss" in r]
    assert len(terms) == STEPS and min(terms) > 0


def test_a_sparsegpt_start_holds_its_two_of_four_masks(runs, tiny_base):
    cfg, masks, _ = runs["sparsegpt 2:4"]
    out = Path(cfg.train.output_dir)
    base, tuned = _hf(tiny_base), _hf(out / "hf")
    targets = [n for n in base if n.endswith("_proj.weight")]
    for name in targets:
        zeros = (tuned[name] == 0).reshape(-1, 4).sum(axis=1)
        assert np.all(zeros >= 2), name  # every 4 consecutive inputs of every row
    first = masks[2]
    assert all(all(np.array_equal(m[p], first[p]) for p in first) for m in masks.values())
    # Calibrated on the run's data, the choice is not magnitude's.
    by_magnitude = [_two_of_four_by_magnitude(base[n]) for n in targets]
    kept = [(tuned[n] != 0).reshape(-1, 4) for n in targets]
    assert any(not np.array_equal(k, m) for k, m in zip(kept, by_magnitude, strict=True))
    report = json.loads((out / "pruning.json").read_text())
    assert report["rules"][0]["method"] == "sparsegpt"
    assert report["calibration"]["samples"] == 8 and report["calibration"]["max_seq_len"] == 64
    evals = _evals(out)
    assert evals[-1] < evals[0]


def test_gradual_masks_only_lose_entries_up_to_the_target_and_resume_mid_schedule(runs):
    cfg, masks, final = runs["gradual"]
    steps = sorted(masks)
    for a, b in zip(steps, steps[1:], strict=False):
        for p in masks[a]:
            assert not np.any(masks[b][p] & ~masks[a][p]), (a, b, p)  # superset of zeros
    fractions = [np.mean([1 - m.mean() for m in masks[s].values()]) for s in steps]
    assert fractions == sorted(fractions) and fractions[0] < 0.7
    rule = cfg.prune.rules[0]
    expect = [rule.sparsity_at(s, 0.7) for s in steps]
    for s, want in zip(steps, expect, strict=True):
        for p, m in masks[s].items():
            pruned = m.size - int(m.sum())
            assert pruned == math.floor(want * m.size + 1e-6), (s, p)
    out = Path(cfg.train.output_dir)
    w = _hf(out / "hf")["model.layers.0.mlp.up_proj.weight"]
    assert int(np.sum(w == 0)) == math.floor(0.7 * w.size)
    evals = _evals(out)
    assert evals[-1] < evals[0]
    # Resumed from its step-4 checkpoint, the run ends where the straight run did.
    engine = make_engine(cfg)
    path, _ = engine.load_checkpoint(out / "checkpoints", tag="4")
    assert path is not None and engine.global_steps == 4
    while engine.global_steps < STEPS:
        engine.train_step()
    got = engine.mode.host_masks(engine.state["masks"])
    assert all(np.array_equal(got[p], masks[STEPS][p]) for p in masks[STEPS])
    same = jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
        engine.state["params"],
        final["params"],
    )
    assert all(jax.tree.leaves(same))
    engine.close()


def test_a_structured_run_ships_the_smaller_model(runs, tiny_base):
    cfg, masks, _ = runs["rows + heads"]
    masks = dict(masks)
    hf_config, masked = masks.pop("masked model")
    changed = {
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
    }
    out = Path(cfg.train.output_dir)
    batch = probe_batch(hf_config["vocab_size"])
    ours = jax_logits(hf_config, masked, batch)
    theirs = hf_logits(out / "hf", batch)  # transformers, on the smaller model
    assert max_abs_logit_diff(ours, theirs, batch["attention_mask"]) <= 1e-5
    config = json.loads((out / "hf" / "config.json").read_text())
    for key, value in changed.items():
        assert config[key] == value, key
    base_cfg = json.loads((Path(tiny_base) / "config.json").read_text())
    assert all(config[k] == base_cfg[k] for k in ("hidden_size", "num_hidden_layers"))
    first = masks[2]
    assert all(all(np.array_equal(m[p], first[p]) for p in first) for m in masks.values())
    report = json.loads((out / "pruning.json").read_text())
    fractions = {n: t["sparsity"] for n, t in report["tensors"].items()}
    assert fractions and all(f == 0.5 for f in fractions.values())
    evals = _evals(out)
    assert evals[-1] < evals[0]


def test_topk_scores_train_and_choose_the_shipped_zeros(runs):
    cfg, masks, state = runs["topk"]
    first = masks.pop("scores at 2")["entries"]
    last = jax.device_get(state["scores"]["entries"])
    moved = [
        float(np.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(last), strict=True)
    ]
    assert len(moved) == 14 and min(moved) > 0  # every tensor's scores trained
    for step, found in masks.items():
        for p, m in found.items():
            assert m.size - int(m.sum()) == m.size // 2, (step, p)  # top half of the scores
    final = masks[STEPS]
    changed = sum(int(np.sum(masks[2][p] != final[p])) for p in final)
    assert changed > 0  # the mask follows the scores: pruned entries came back
    tuned = _hf(Path(cfg.train.output_dir) / "hf")
    w = tuned["model.layers.1.mlp.down_proj.weight"]
    assert np.array_equal(w != 0, final["layers.1.mlp.down_proj.kernel"].T)
    evals = _evals(Path(cfg.train.output_dir))
    assert evals[-1] < evals[0]


def test_bad_prune_settings_are_refused_with_the_field():
    llama = tiny_config("tiny-llama")
    shapes = {
        "model.layers.0.self_attn.q_proj.weight": (64, 64),
        "model.layers.0.self_attn.k_proj.weight": (32, 64),
        "model.layers.0.self_attn.v_proj.weight": (32, 64),
        "model.layers.0.self_attn.o_proj.weight": (64, 64),
        "model.layers.0.mlp.up_proj.weight": (128, 64),
    }
    gpt2 = {**tiny_config("tiny-gpt2"), "n_layer": 1}
    with pytest.raises(UserError, match=r"transformer.h.0.attn.c_proj.weight has 64 inputs, not"):
        Pruner(
            load_config(None, ['prune.pattern="3:5"']).prune,
            gpt2,
            {"transformer.h.0.attn.c_proj.weight": (64, 64)},
        )
    cases = [
        (["prune.pattern=heads", "prune.sparsity=0.75"], "groups of 2"),
        (["prune.modules=[nothing_here]"], "match no prunable module"),
        (["prune.pattern=heads", "prune.num_heads=12"], "model has 4 attention heads"),
    ]
    for sets, fragment in cases:
        cfg = load_config(None, sets)
        with pytest.raises(UserError, match=fragment):
            Pruner(cfg.prune, llama, shapes)
    for sets, fragment in [
        (["prune.sparsity=1.0"], "prune.rules.0.sparsity"),
        (["prune.method=snip"], "prune.rules.0.method"),
        (["prune.method=topk", "prune.end_step=9"], "topk keeps its ratio"),
        (["prune.start_step=5", "prune.end_step=3"], "end_step 3 must come after"),
        (["prune.sparsity=0.5", "lora.rank=4"], "choose one of"),
        (['prune.pattern="4:2"'], "0 < N < M"),
        (["prune.pattern=2:4"], "quote an N:M pattern"),
        (['prune.pattern="2:4"', "prune.sparsity=0.7"], "means sparsity 0.5"),
        (['prune.pattern="2:4"', "prune.end_step=9"], "one cut"),
        (["prune.method=wanda", "prune.pattern=rows"], "wanda prunes entries"),
        (["prune.method=movement"], "start_step must be at least 1"),
        (["prune.method=sparsegpt", "prune.start_step=2"], "cuts once, before training"),
        (
            ["prune.rules=[{method: wanda}, {pattern: rows, sparsity: 0.25}]"],
            "must be the run's only pruning rule",
        ),
        (["prune.method=wanda", "prune.calibration_samples=0"], "calibration_samples"),
    ]:
        with pytest.raises(UserError, match=fragment):
            load_config(None, sets)
