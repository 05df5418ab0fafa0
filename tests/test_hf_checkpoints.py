"""Reading and writing Hugging Face directories: every layout and dtype, bit for bit."""

import json

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from interop.checkpoints.hf import (
    HFCheckpointReader,
    is_hf_dir,
    parse_size,
    read_hf_config,
    write_hf_checkpoint,
)
from interop.errors import UserError
from interop.outputs import output_dir

TIED = {"lm_head.weight"}


def tiny_llama(dtype=torch.float32):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def as_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


def expected_state(model):
    return {k: v for k, v in model.state_dict().items() if k not in TIED}


@pytest.mark.parametrize(
    "dtype,np_dtype",
    [
        (torch.float32, np.float32),
        (torch.float16, np.float16),
        (torch.bfloat16, ml_dtypes.bfloat16),
    ],
)
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_reader_matches_saved_state_dict(tmp_path, dtype, np_dtype, layout):
    model = tiny_llama(dtype)
    model.save_pretrained(tmp_path, max_shard_size="8KB" if layout == "sharded" else "5GB")
    assert (tmp_path / "model.safetensors.index.json").is_file() == (layout == "sharded")
    want = expected_state(model)
    with HFCheckpointReader(tmp_path) as reader:
        assert reader.names() == sorted(want)
        for name, array in reader:
            assert reader.shape(name) == tuple(want[name].shape) == array.shape
            assert reader.dtype(name) == np.dtype(np_dtype) == array.dtype
            assert as_bytes(array) == as_bytes(
                want[name].view(torch.int16).numpy()
                if dtype == torch.bfloat16
                else want[name].numpy()
            )


def test_reader_reads_pytorch_model_bin_single_and_sharded(tmp_path):
    model = tiny_llama(torch.bfloat16)
    state = expected_state(model)
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text(model.config.to_json_string())
    torch.save(state, single / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(model.config.to_json_string())
    names = sorted(state)
    halves = {
        "pytorch_model-00001-of-00002.bin": names[:5],
        "pytorch_model-00002-of-00002.bin": names[5:],
    }
    for fname, part in halves.items():
        torch.save({n: state[n] for n in part}, sharded / fname)
    index = {"weight_map": {n: f for f, part in halves.items() for n in part}}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    for path in (single, sharded):
        assert is_hf_dir(path)
        with HFCheckpointReader(path) as reader:
            got = dict(reader)
        assert sorted(got) == names
        for n in names:
            assert got[n].dtype == ml_dtypes.bfloat16
            assert as_bytes(got[n]) == as_bytes(state[n].view(torch.int16).numpy())


@pytest.mark.parametrize("max_shard_size", ["5GB", "20KB"])
def test_writer_round_trip_and_transformers_loads_it(tmp_path, max_shard_size):
    model = tiny_llama()
    src, dst = tmp_path / "src", tmp_path / "dst"
    model.save_pretrained(src)
    (src / "tokenizer_config.json").write_text("{}")
    with HFCheckpointReader(src) as reader, output_dir(dst, overwrite=False) as tmp:
        write_hf_checkpoint(
            tmp, reader, read_hf_config(src), max_shard_size=max_shard_size, tokenizer_src=src
        )
    assert (dst / "tokenizer_config.json").read_text() == "{}"
    sharded = max_shard_size == "20KB"
    assert (dst / "model.safetensors.index.json").is_file() == sharded
    if sharded:
        index = json.loads((dst / "model.safetensors.index.json").read_text())
        files = set(index["weight_map"].values())
        assert len(files) > 1 and all((dst / f).stat().st_size <= 20_000 + 2_000 for f in files)
        assert index["metadata"]["total_size"] == sum(
            v.numel() * v.element_size() for v in expected_state(model).values()
        )
    with HFCheckpointReader(src) as a, HFCheckpointReader(dst) as b:
        assert a.names() == b.names()
        assert all(as_bytes(a.get(n)) == as_bytes(b.get(n)) for n in a.names())
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(dst).eval()
    ids = torch.arange(10).reshape(2, 5)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_parse_size_uses_decimal_units():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(123) == 123
    with pytest.raises(UserError, match="--max-shard-size"):
        parse_size("five gigs")


def test_index_naming_a_missing_shard(tmp_path):
    tiny_llama().save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / victim).unlink()
    with pytest.raises(UserError, match=f"names shard {victim}, which is missing"):
        HFCheckpointReader(tmp_path)


def test_truncated_safetensors_fails_in_the_constructor(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    for keep in (4, 40, weights.stat().st_size - 1):
        data = weights.read_bytes()
        (tmp_path / "cut").mkdir(exist_ok=True)
        (tmp_path / "cut" / "config.json").write_text((tmp_path / "config.json").read_text())
        (tmp_path / "cut" / "model.safetensors").write_bytes(data[:keep])
        with pytest.raises(UserError, match="model.safetensors: truncated or corrupt"):
            HFCheckpointReader(tmp_path / "cut")


def test_missing_config_and_missing_weights(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{\n  bad")
    with pytest.raises(UserError, match="config.json: line 2: invalid JSON"):
        read_hf_config(tmp_path)
    with pytest.raises(UserError, match="no model weights"):
        HFCheckpointReader(tmp_path)


def test_output_dir_refuses_existing_and_cleans_up_on_failure(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        with output_dir(dst, overwrite=False):
            raise AssertionError("never reached")
    with pytest.raises(RuntimeError):
        with output_dir(dst, overwrite=True) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("crash mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]
    assert (dst / "keep.txt").read_text() == "mine"
    with output_dir(dst, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dst.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]
