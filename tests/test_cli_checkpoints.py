"""`jax-sft convert` and `jax-sft compare` end to end, and their answers to bad input."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from tiny_hf import CONFIGS, VOCAB, hf_logits, make_model

from interop.checkpoints.hf import HFCheckpointReader
from interop.probe import max_abs_logit_diff, probe_batch
from jax_sft import cli


def run_cli(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def raw_tensors(path):
    with HFCheckpointReader(path) as reader:
        return {name: (array.dtype, array.tobytes()) for name, array in reader}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Every tiny family saved by transformers (fp32), plus a bf16 Llama."""
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for name in CONFIGS:
        dirs[name] = root / name
        make_model(name).save_pretrained(dirs[name])
    dirs["llama-bf16"] = root / "llama-bf16"
    make_model("llama-gqa-untied").to(torch.bfloat16).save_pretrained(dirs["llama-bf16"])
    return dirs


@pytest.mark.parametrize("name", [*sorted(CONFIGS), "llama-bf16"])
def test_hf_orbax_hf_round_trip_is_bit_exact(hf_dirs, tmp_path, capsys, name):
    src = hf_dirs[name]
    orbax, back = tmp_path / "orbax", tmp_path / "back"
    assert run_cli(capsys, "convert", src, orbax, "--to", "orbax")[0] == 0
    status, out, _ = run_cli(capsys, "convert", orbax, back, "--to", "hf", "--json")
    assert status == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["src_format"] == "orbax" and summary["dst_format"] == "hf"
    original, round_trip = raw_tensors(src), raw_tensors(back)
    assert set(round_trip) == set(original)
    for key in original:
        assert round_trip[key] == original[key], key


@pytest.mark.parametrize("name", ["llama-tied-rope-llama3", "opt-post-ln-proj", "gpt2"])
def test_transformers_loads_the_written_directory(hf_dirs, tmp_path, capsys, name):
    src, orbax, back = hf_dirs[name], tmp_path / "orbax", tmp_path / "back"
    run_cli(capsys, "convert", src, orbax, "--to", "orbax")
    run_cli(capsys, "convert", orbax, back, "--to", "hf", "--max-shard-size", "20KB")
    assert (back / "model.safetensors.index.json").is_file()
    batch = probe_batch(VOCAB)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(back, attn_implementation="eager")
    want = hf_logits(make_model(name), batch)
    assert max_abs_logit_diff(hf_logits(reloaded.eval(), batch), want, batch["attention_mask"]) == 0


def test_compare_hf_against_orbax_uses_torch_and_reports_json(hf_dirs, tmp_path, capsys):
    src, orbax = hf_dirs["llama-gqa-untied"], tmp_path / "orbax"
    run_cli(capsys, "convert", src, orbax, "--to", "orbax")
    status, out, _ = run_cli(capsys, "compare", src, orbax, "--json", "--atol", "1e-5")
    summary = json.loads(out.strip().splitlines()[-1])
    assert status == 0
    assert summary["engine_a"] == "torch" and summary["engine_b"] == "jax"
    assert summary["max_abs_param_diff"] == 0.0
    assert 0.0 < summary["max_abs_logit_diff"] <= 1e-5  # two frameworks: close, not identical
    assert summary["passed"] is True


def test_compare_names_the_worst_tensor(hf_dirs, tmp_path, capsys):
    src = hf_dirs["gpt2"]
    edited = tmp_path / "edited"
    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[3, 5] += 0.5
    model.save_pretrained(edited)
    status, out, _ = run_cli(
        capsys, "compare", src, edited, "--engine", "jax", "--json", "--atol", "1e-5"
    )
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["worst_param"] == "transformer.h.1.mlp.c_fc.weight"
    assert summary["max_abs_param_diff"] == pytest.approx(0.5, abs=1e-6)
    assert summary["max_abs_logit_diff"] > 1e-3 and status == 1


def test_user_error_exits_2_with_one_line_and_no_traceback(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jax_sft.cli",
            "convert",
            str(empty),
            str(tmp_path / "o"),
            "--to",
            "orbax",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"jax-sft: error: {empty}: no config.json (not a Hugging Face or Orbax model directory)"
    ]
    assert not (tmp_path / "o").exists()


def test_unsupported_model_type(hf_dirs, tmp_path, capsys):
    src = tmp_path / "bert"
    shutil.copytree(hf_dirs["gpt2"], src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(dict(config, model_type="bert")))
    status, _, err = run_cli(capsys, "convert", src, tmp_path / "o", "--to", "orbax")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "unsupported model_type 'bert' (supported: gpt2, llama, mistral, opt, qwen2)" in err


def test_wrong_shape_tensor_is_named(hf_dirs, tmp_path, capsys):
    src = tmp_path / "wrong"
    model = make_model("llama-gqa-untied")
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight = torch.nn.Parameter(torch.zeros(4, 32))
    model.save_pretrained(src)
    status, _, err = run_cli(capsys, "convert", src, tmp_path / "o", "--to", "orbax")
    assert status == 2
    assert (
        "tensor model.layers.0.self_attn.k_proj.weight has shape (4, 32), expected (16, 32)" in err
    )


def test_truncated_safetensors_is_named(hf_dirs, tmp_path, capsys):
    src = tmp_path / "cut"
    shutil.copytree(hf_dirs["opt-pre-ln"], src)
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    status, _, err = run_cli(capsys, "convert", src, tmp_path / "o", "--to", "orbax")
    assert status == 2 and "model.safetensors" in err and "truncated" in err
    assert not (tmp_path / "o").exists()


def test_existing_destination_is_kept_without_overwrite(hf_dirs, tmp_path, capsys):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me")
    status, _, err = run_cli(capsys, "convert", hf_dirs["gpt2"], dst, "--to", "orbax")
    assert status == 2 and "--overwrite" in err
    assert [p.name for p in dst.iterdir()] == ["precious.txt"]
    assert run_cli(capsys, "convert", hf_dirs["gpt2"], dst, "--to", "orbax", "--overwrite")[0] == 0
    assert not (dst / "precious.txt").exists() and (dst / "params").is_dir()


def test_missing_config_json_in_hf_dir(hf_dirs, tmp_path, capsys):
    src = tmp_path / "noconf"
    shutil.copytree(hf_dirs["gpt2"], src)
    (src / "config.json").unlink()
    status, _, err = run_cli(capsys, "compare", src, hf_dirs["gpt2"])
    assert status == 2 and f"{src}: no config.json" in err
