"""`jax-sft prune` end to end: the written files, magnitude masks against an independent
NumPy reference, and its answers to bad input."""

import json
import math
import re

import numpy as np
import pytest
import transformers
from tiny_hf import make_model

from interop.checkpoints.hf import HFCheckpointReader
from jax_sft import cli

# The 2-D weights of a Llama's attention and FFN blocks: what unstructured pruning targets.
TARGETED = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]|mlp\.(gate|up|down))_proj\.weight")


def run_cli(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def tensors(path):
    with HFCheckpointReader(path) as reader:
        return dict(reader)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny GQA Llama (4 query heads, 2 KV heads) with a tokenizer file beside it."""
    path = tmp_path_factory.mktemp("model") / "llama"
    make_model("llama-gqa-untied").save_pretrained(path)
    (path / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    return path


def magnitude_reference(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep mask: the n - floor(s * n) largest |W|, ties to the lower flat index."""
    flat = np.abs(weight.astype(np.float64)).reshape(-1)
    order = np.argsort(-flat, kind="stable")
    keep = np.zeros(flat.size, bool)
    keep[order[: flat.size - math.floor(sparsity * flat.size)]] = True
    return keep.reshape(weight.shape)


def test_unstructured_magnitude_matches_a_numpy_reference(llama, tmp_path, capsys):
    out = tmp_path / "out"
    status, stdout, _ = run_cli(
        capsys, "prune", llama, out, "--method", "magnitude", "--sparsity", "0.5", "--json"
    )
    assert status == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    before, after = tensors(llama), tensors(out / "hf")
    assert set(after) == set(before)
    targeted = sorted(n for n in before if TARGETED.fullmatch(n))
    assert len(targeted) == 14 and sorted(summary["tensors"]) == targeted
    for name, weight in before.items():
        if name not in targeted:
            assert after[name].tobytes() == weight.tobytes(), name
            continue
        keep = magnitude_reference(weight, 0.5)
        assert np.count_nonzero(after[name] == 0) == math.floor(0.5 * weight.size), name
        assert after[name][keep].tobytes() == weight[keep].tobytes(), name
        assert not after[name][~keep].any(), name
    assert summary["parameters_before"] == summary["parameters_after"]
    assert summary["zeros"] * 2 == summary["targeted"] and summary["shrunk"] is False
    assert summary["hf"] == str(out / "hf") and summary["report"] == str(out / "pruning.json")
    assert (out / "hf" / "tokenizer_config.json").read_bytes() == (
        llama / "tokenizer_config.json"
    ).read_bytes()
    report = json.loads((out / "pruning.json").read_text())
    assert report["tensors"][targeted[0]]["sparsity"] == 0.5 and report["structures"] == {}


def test_rows_shrink_and_no_shrink(llama, tmp_path, capsys):
    args = ("prune", llama, "--pattern", "rows", "--sparsity", "0.5", "--json")
    status, stdout, _ = run_cli(capsys, *args[:2], tmp_path / "small", *args[2:])
    assert status == 0
    small = json.loads(stdout.strip().splitlines()[-1])
    removed = 2 * 3 * 32 * 24  # layers x (gate, up, down) x hidden x neurons cut
    assert small["shrunk"] is True
    assert small["parameters_before"] - small["parameters_after"] == removed
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "small" / "hf")
    assert model.config.intermediate_size == 24
    assert model.num_parameters() == small["parameters_after"]
    status, stdout, _ = run_cli(capsys, *args[:2], tmp_path / "dense", *args[2:], "--no-shrink")
    dense = json.loads(stdout.strip().splitlines()[-1])
    assert status == 0 and dense["shrunk"] is False
    assert dense["parameters_after"] == dense["parameters_before"]
    report = json.loads((tmp_path / "small" / "pruning.json").read_text())
    assert [len(b["kept"]) for b in report["structures"].values()] == [24, 24]


def test_random_method_is_seeded(llama, tmp_path, capsys):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        args = ("--method", "random", "--sparsity", "0.3", "--seed", seed)
        assert run_cli(capsys, "prune", llama, tmp_path / name, *args)[0] == 0
        runs[name] = tensors(tmp_path / name / "hf")["model.layers.0.mlp.up_proj.weight"]
    assert np.array_equal(runs["a"], runs["b"]) and not np.array_equal(runs["a"], runs["c"])


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--sparsity", "1.0"], "--sparsity 1.0"),
        (["--sparsity", "-0.1"], "--sparsity -0.1"),
        (["--sparsity", "0.5", "--method", "snip"], "argument --method"),
        (["--sparsity", "0.5", "--pattern", "n:m"], "--pattern n:m: must be one of"),
        (["--sparsity", "0.5", "--modules", "mlp", "atention"], "--modules 'atention'"),
        (["--sparsity", "0.5", "--exclude", "nothing_here"], "--exclude 'nothing_here'"),
        (["--sparsity", "0.5", "--modules", "("], "--modules"),
        (["--sparsity", "0.5", "--seed", "-1"], "--seed -1"),
        (["--sparsity", "0.25", "--pattern", "heads"], "keep a non-zero multiple of 2"),
    ],
)
def test_bad_input_exits_2_with_one_line(llama, tmp_path, capsys, flags, names):
    status, stdout, stderr = run_cli(capsys, "prune", llama, tmp_path / "out", *flags)
    assert status == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jax-sft: error: ") and names in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_existing_out_needs_overwrite(llama, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["prune", llama, out, "--sparsity", "0.5"]
    status, _, stderr = run_cli(capsys, *argv)
    assert status == 2
    assert stderr.strip().splitlines() == [
        f"jax-sft: error: {out} exists; pass --overwrite to replace it"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "keep.txt").exists()
    status, _, stderr = run_cli(capsys, *argv, "--overwrite")
    assert status == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["hf", "pruning.json"]
