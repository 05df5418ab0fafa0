"""Pruned checkpoints stored as bitmask + values: encode/decode bit-exact, the stored size
against its formula, `jax-sft convert --to sparse` and back, and bad input."""

import json

import ml_dtypes
import numpy as np
import pytest
from tiny_hf import make_model

from interop.checkpoints.formats import detect_format
from interop.checkpoints.hf import HFCheckpointReader, read_tensors, write_tensors
from interop.checkpoints.hf_write import write_hf_checkpoint
from interop.checkpoints.sparse_bitmask import MIN_SPARSITY, decode, encode, stored_size
from jax_sft import cli
from jax_sft.checkpoints.placed import TensorSource

LAYER = "model.layers.0.mlp.down_proj.weight"


def run_cli(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def raw(path):
    with HFCheckpointReader(path) as reader:
        return {name: (array.dtype, array.shape, array.tobytes()) for name, array in reader}


def pruned(array, sparsity, rng):
    """`array` with a random `sparsity` of its entries zeroed, row 1 all zero and one -0.0."""
    out = array.copy()
    out.reshape(-1)[rng.permutation(out.size)[: int(sparsity * out.size)]] = 0
    out[1] = 0
    out[2, 3] = -0.0
    return out


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("cols", [13, 64])
def test_round_trip_is_bit_exact(dtype, cols):
    rng = np.random.default_rng(0)
    weight = pruned(rng.normal(size=(20, cols)).astype(dtype), 0.5, rng)
    parts = encode(weight)
    assert parts["bitmask"].shape == (20, -(-cols // 8)) and parts["bitmask"].dtype == np.uint8
    assert parts["compressed"].dtype == weight.dtype and parts["row_offsets"].dtype == np.int32
    assert parts["shape"].tolist() == [20, cols]
    back = decode(parts, "test")
    assert back.dtype == weight.dtype and back.tobytes() == weight.tobytes()
    assert np.signbit(back[2, 3].astype(np.float32))  # -0.0 is a value, kept as such


def test_dense_tensors_stay_dense():
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(16, 16)).astype(np.float32)
    assert encode(weight) is None  # no zeros
    assert encode(pruned(weight, MIN_SPARSITY - 0.1, rng)) is None  # below the floor
    assert encode(np.zeros(16, np.float32)) is None  # 1-D
    assert encode(np.zeros((64, 1), np.float32)) is None  # bitmask + offsets cost more


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_size_follows_the_formula(dtype):
    rng = np.random.default_rng(2)
    rows, cols, sparsity = 128, 100, 0.5
    weight = pruned(rng.normal(size=(rows, cols)).astype(dtype), sparsity, rng)
    zeros = weight.size - np.count_nonzero(weight.view(f"u{weight.itemsize}"))
    stored = sum(a.nbytes for a in encode(weight).values())
    assert stored == stored_size((rows, cols), zeros, weight.itemsize)
    # (1 - s) x dense + bitmask, plus 4 bytes of offset per row and the shape's 16.
    ideal = (1 - zeros / weight.size) * weight.nbytes + rows * -(-cols // 8)
    assert 0 <= stored - ideal == 4 * rows + 16 < 0.05 * ideal


@pytest.fixture(scope="module")
def pruned_hf(tmp_path_factory):
    """{dtype name: HF dir} of a tiny Llama whose 2-D layer weights are half zeros."""
    root = tmp_path_factory.mktemp("pruned")
    dense = root / "dense"
    make_model("llama-gqa-untied").save_pretrained(dense)
    config = json.loads((dense / "config.json").read_text())
    rng = np.random.default_rng(3)
    with HFCheckpointReader(dense) as reader:
        tensors = dict(reader)
    for name, array in tensors.items():
        if name.startswith("model.layers.") and array.ndim == 2:
            tensors[name] = pruned(array, 0.5, rng)
    dirs = {}
    for dtype in ("float32", "bfloat16"):
        dirs[dtype] = root / dtype
        dirs[dtype].mkdir()
        cast = {n: a.astype(getattr(ml_dtypes, dtype, dtype)) for n, a in tensors.items()}
        write_hf_checkpoint(dirs[dtype], cast.items(), {**config, "torch_dtype": dtype})
        (dirs[dtype] / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    return dirs


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_convert_to_sparse_and_back(pruned_hf, tmp_path, capsys, dtype):
    src, sparse, back = pruned_hf[dtype], tmp_path / "sparse", tmp_path / "back"
    status, out, _ = run_cli(capsys, "convert", src, sparse, "--to", "sparse", "--json")
    assert status == 0 and detect_format(sparse) == "sparse"
    summary = json.loads(out.strip().splitlines()[-1])
    marker = json.loads((sparse / "config.json").read_text())["sparsity_config"]
    source = raw(src)
    layers = sorted(n for n, (_, shape, _) in source.items() if n.startswith("model.layers."))
    targets = [n for n in layers if len(source[n][1]) == 2]
    assert marker["format"] == "sparse-bitmask" and marker["targets"] == targets
    stored = raw(sparse)
    for name in source:
        if name in targets:
            assert name not in stored and f"{name}.bitmask" in stored
        else:
            assert stored[name] == source[name], name  # left dense, as it was
    # Exactly the dense bytes less what each target saves by the size formula.
    expected = summary["bytes"]
    for name in targets:
        dt, shape, data = source[name]
        zeros = int(np.count_nonzero(np.frombuffer(data, f"u{dt.itemsize}") == 0))
        expected -= int(np.prod(shape)) * dt.itemsize - stored_size(shape, zeros, dt.itemsize)
    assert summary["compressed_bytes"] == expected < summary["bytes"]

    status, out, _ = run_cli(capsys, "convert", sparse, back, "--to", "hf", "--json")
    assert status == 0 and json.loads(out.strip().splitlines()[-1])["src_format"] == "sparse"
    assert raw(back) == source
    assert json.loads((back / "config.json").read_text()) == json.loads(
        (src / "config.json").read_text()
    )
    for d in (sparse, back):
        assert (d / "tokenizer_config.json").read_bytes() == (
            src / "tokenizer_config.json"
        ).read_bytes()
    # A training run starts from the sparse directory as from the dense one.
    dense, decoded = TensorSource(src), TensorSource(sparse)
    assert decoded.config == dense.config and "sparsity_config" not in decoded.config
    for path in dense.shapes:
        got = decoded.read(path)
        assert got.dtype == dense.read(path).dtype and np.array_equal(got, dense.read(path))


def test_not_a_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    status, _, err = run_cli(capsys, "convert", tmp_path / "src", tmp_path / "o", "--to", "sparse")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "src" in err
    assert not (tmp_path / "o").exists()


def test_corrupt_bitmask_is_refused(pruned_hf, tmp_path, capsys):
    sparse = tmp_path / "sparse"
    assert run_cli(capsys, "convert", pruned_hf["float32"], sparse, "--to", "sparse")[0] == 0
    tensors = read_tensors(sparse / "model.safetensors")
    tensors[f"{LAYER}.bitmask"] = tensors[f"{LAYER}.bitmask"][:, :-1].copy()
    write_tensors(tensors, sparse / "model.safetensors")
    status, _, err = run_cli(capsys, "convert", sparse, tmp_path / "back", "--to", "hf")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert f"tensor {LAYER}.bitmask" in err and "expected uint8" in err
    assert not (tmp_path / "back").exists()
