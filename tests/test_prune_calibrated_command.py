"""`jax-sft prune --method wanda | sparsegpt`: calibration on the model's own activations,
layer after layer, checked against activations `transformers` records for the same text."""

import json
import re
from argparse import Namespace

import numpy as np
import pytest
import torch
import transformers

from interop.checkpoints.hf import HFCheckpointReader
from interop.pruning.calibrated import magnitude_mask, wanda_mask
from jax_sft import cli
from jax_sft.prune.one_shot import calibration_ids

DATA = "configs/data/demo_sft"
LAYER0 = "model.layers.0."
LINEARS = [f"self_attn.{p}_proj" for p in "qkvo"] + [
    f"mlp.{p}_proj" for p in ("gate", "up", "down")
]
CALIBRATION = ["--data", DATA, "--calibration-samples", "8", "--max-seq-len", "64"]


def tensors(path):
    with HFCheckpointReader(path) as reader:
        return dict(reader)


def prune(capsys, base, out, *flags):
    status = cli.main(["prune", str(base), str(out), *map(str, flags), "--json"])
    stdout, stderr = capsys.readouterr()
    return status, stdout, stderr


@pytest.fixture(scope="module")
def layer0_inputs(tiny_base):
    """Layer 0's linear inputs [tokens, in] on the calibration text, recorded by hooks on
    the `transformers` model (layer 0 sees the dense embeddings, whatever is pruned)."""
    args = Namespace(data=DATA, max_seq_len=64, calibration_samples=8)
    ids = torch.from_numpy(calibration_ids(tiny_base, args)).long()
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    seen = {}
    layer = model.model.layers[0]
    hooks = [
        layer.get_submodule(name).register_forward_hook(
            lambda _m, inp, _o, name=name: seen.__setitem__(
                name, inp[0].reshape(-1, inp[0].shape[-1])
            )
        )
        for name in LINEARS
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return {name: x.double().numpy() for name, x in seen.items()}


@pytest.fixture(scope="module")
def pruned(tiny_base, tmp_path_factory):
    """The tiny base pruned three ways: {name: (summary, tensors)}."""
    runs = {
        "wanda": ["--method", "wanda", "--sparsity", "0.5"],
        "sparsegpt": ["--method", "sparsegpt", "--sparsity", "0.5"],
        "wanda 2:4": ["--method", "wanda", "--pattern", "2:4"],
    }
    out = {}
    for name, flags in runs.items():
        dst = tmp_path_factory.mktemp("pruned") / "out"
        status = cli.main(["prune", str(tiny_base), str(dst), *flags, *CALIBRATION, "--json"])
        assert status == 0, name
        out[name] = tensors(dst / "hf")
        report = json.loads((dst / "pruning.json").read_text())
        assert report["rules"][0]["method"] == flags[1], name
        assert report["calibration"] == {"data": DATA, "samples": 8, "max_seq_len": 64}
    return out


def test_wanda_keeps_each_rows_top_weight_times_input_norm(pruned, tiny_base, layer0_inputs):
    base = tensors(tiny_base)
    for linear, x in layer0_inputs.items():
        name = f"{LAYER0}{linear}.weight"
        weight, got = base[name], pruned["wanda"][name] != 0
        norms = np.sqrt(np.sum(x * x, axis=0))
        want = wanda_mask(weight, norms, sparsity=0.5)
        # Our activations and torch's differ in the last float bits: masks may differ
        # only where two scores of a row tie to 1e-5.
        scores = np.abs(weight.astype(np.float64)) * norms
        for row in np.nonzero(np.any(got != want, axis=1))[0]:
            cut = np.sort(scores[row])[weight.shape[1] // 2]
            assert np.allclose(scores[row][got[row] != want[row]], cut, rtol=1e-5), name
        assert np.mean(got == want) > 0.999, name
        assert np.array_equal(np.sum(~got, axis=1), np.full(weight.shape[0], weight.shape[1] // 2))
        assert np.array_equal(pruned["wanda"][name][got], weight[got]), "kept weights unchanged"
    assert not np.array_equal(
        pruned["wanda"][f"{LAYER0}mlp.up_proj.weight"] != 0,
        magnitude_mask(base[f"{LAYER0}mlp.up_proj.weight"], sparsity=0.5),
    ), "the activations change the choice"


def test_sparsegpt_reconstructs_layer_outputs_better(pruned, tiny_base, layer0_inputs):
    base = tensors(tiny_base)
    errors = {"sparsegpt": 0.0, "wanda": 0.0, "magnitude": 0.0}
    for linear, x in layer0_inputs.items():
        name = f"{LAYER0}{linear}.weight"
        dense = base[name].astype(np.float64)
        candidates = {
            "sparsegpt": pruned["sparsegpt"][name],
            "wanda": pruned["wanda"][name],
            "magnitude": np.where(magnitude_mask(dense, sparsity=0.5), dense, 0),
        }
        for method, weight in candidates.items():
            errors[method] += np.linalg.norm(x @ (dense - weight.astype(np.float64)).T) ** 2
        kept = pruned["sparsegpt"][name] != 0
        assert np.mean(~kept) == pytest.approx(0.5, abs=0.01), name
        assert not np.array_equal(pruned["sparsegpt"][name][kept], base[name][kept]), "repaired"
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_two_of_four_leaves_two_zeros_in_every_group(pruned, tiny_base):
    for name, weight in tensors(tiny_base).items():
        got = pruned["wanda 2:4"][name]
        if name.endswith("_proj.weight"):
            assert np.all(np.sum(got.reshape(-1, 4) == 0, axis=1) >= 2), name
        else:
            assert np.array_equal(got, weight), name


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (
            ["--method", "wanda", "--sparsity", "0.5", "--data", DATA, "--max-seq-len", "100000"],
            "demo_sft: .* tokens, shorter than one calibration sequence of 100000",
        ),
        (
            ["--method", "sparsegpt", "--pattern", "rows", "--sparsity", "0.5", "--data", DATA],
            "--method sparsegpt prunes entries",
        ),
        (["--method", "wanda", "--sparsity", "0.5"], "needs calibration text: --data FILE"),
        (["--pattern", "3:5"], r"down_proj.weight has 128 inputs, not a multiple of 5"),
        (["--pattern", "rows"], "--sparsity is needed"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_base, tmp_path, capsys, flags, fragment):
    status, stdout, stderr = prune(capsys, tiny_base, tmp_path / "out", *flags)
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(fragment, lines[0]), stderr
    assert not (tmp_path / "out").exists()


def test_a_fused_projection_is_refused_before_any_calibration():
    from interop.errors import UserError
    from interop.tiny_configs import tiny_config
    from jax_sft.models import registry
    from jax_sft.prune.calibrate import prune_model

    model = registry.build_model(tiny_config("tiny-gpt2"))
    ids = np.ones((1, 8), np.int32)
    with pytest.raises(UserError, match=r"h\.0\.attn\.c_attn\.kernel is not a plain linear"):
        prune_model(model, ids, {"h.0.attn.c_attn.kernel"}, "wanda", sparsity=0.5, n_m=None)
    masks = prune_model(model, ids, {"h.1.mlp.c_fc.kernel"}, "wanda", sparsity=0.5, n_m=None)
    assert list(masks) == ["h.1.mlp.c_fc.kernel"] and masks["h.1.mlp.c_fc.kernel"].mean() == 0.5
