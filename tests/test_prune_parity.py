"""Pruning's DeepSpeed configs run on both backends and train the same pruned model.

`configs/ds_prune_l1.json` (DeepSpeed's `sparse_pruning`, l1, dense_ratio 0.5; here with
SquareHead distillation on packed rows) and `configs/ds_prune_rows.json` (`row_pruning`
with related modules) go unchanged through `jax-sft parity --deepspeed_config`: the JAX
trainer and the PyTorch reference (which implements the masks itself, DeepSpeed 0.19
having dropped them) must agree on every step's loss (and distillation term), the final
weights, and every exact zero. The suite runs 10 steps; the 50-step figures are in
docs/pruning.md.
"""

import json
from pathlib import Path

import pytest

from jax_sft import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ds", ["ds_prune_l1.json", "ds_prune_rows.json"])
def test_ds_compression_configs_prune_alike_on_both_backends(parity_bases, tmp_path, ds):
    out = tmp_path / "parity"
    argv = ["parity", str(ROOT / "configs" / "parity-tiny.yaml"), "--steps", "10", "--json"]
    argv += ["--deepspeed_config", str(ROOT / "configs" / ds)]
    for setting in [f"model.path={parity_bases['tiny-llama']}", "model.tiny=null"]:
        argv += ["--set", setting]
    argv += ["--set", f"train.output_dir={out}"]
    distil = ds == "ds_prune_l1.json"
    if distil:  # on packed rows: the teacher, too, attends within each segment
        argv += ["--set", "prune.distill=squarehead", "--set", "data.packing=true"]
    assert cli.main(argv) == 0
    report = json.loads((out / "parity.json").read_text())
    assert report["max_rel_loss_diff"] <= 1e-4
    assert ("max_rel_distill_diff" in report) == distil
    assert report.get("max_rel_distill_diff", 0.0) <= 1e-4
    assert report["final_max_abs_param_diff"] <= 1e-5
    assert report["zero_mismatches"] == 0 and report["tensors_only_in_one"] == []
    sides = [json.loads((out / side / "pruning.json").read_text()) for side in ("jax", "torch")]
    assert sides[0]["tensors"] == sides[1]["tensors"]
    assert sides[0]["structures"] == sides[1]["structures"]
    fractions = {t["sparsity"] for t in sides[0]["tensors"].values()}
    assert fractions == {0.5}
    if ds == "ds_prune_rows.json":
        config = json.loads((out / "jax" / "hf" / "config.json").read_text())
        assert config["intermediate_size"] == 64 and sides[0]["shrunk"]


def test_learned_topk_masks_agree_across_frameworks(parity_bases, tmp_path):
    """Scores trained by each framework's own AdamW pick the same top half every step."""
    out = tmp_path / "parity"
    argv = ["parity", str(ROOT / "configs" / "parity-tiny.yaml"), "--steps", "8", "--json"]
    for setting in [
        f"model.path={parity_bases['tiny-llama']}",
        "model.tiny=null",
        f"train.output_dir={out}",
        "prune.method=topk",
        "prune.sparsity=0.5",
        "prune.start_step=2",
    ]:
        argv += ["--set", setting]
    assert cli.main(argv) == 0
    report = json.loads((out / "parity.json").read_text())
    assert report["max_rel_loss_diff"] <= 1e-4 and report["zero_mismatches"] == 0
    sides = [json.loads((out / side / "pruning.json").read_text()) for side in ("jax", "torch")]
    assert sides[0]["tensors"] == sides[1]["tensors"]
    assert {t["sparsity"] for t in sides[0]["tensors"].values()} == {0.5}


@pytest.mark.parametrize(
    "sets, fragment",
    [
        (["prune.method=movement", "prune.start_step=2"], "movement is not in the PyTorch"),
        (["prune.method=topk", "prune.pattern=rows"], "topk with pattern rows"),
        (["prune.method=topk", "parallel.zero_stage=3"], "topk under ZeRO-3 is not supported"),
        (["prune.regularization=l1", "prune.reg_weight=0.1"], "l1 is not in the PyTorch"),
        (["prune.method=wanda"], "wanda is not in the PyTorch reference; prune one-shot"),
    ],
)
def test_the_reference_refuses_what_it_does_not_implement(sets, fragment):
    from interop.config_files import load_config
    from interop.errors import UserError
    from torch_ref.train.refusals import refuse_unsupported

    with pytest.raises(UserError, match=fragment):
        refuse_unsupported(load_config(None, sets))
