"""Reading and writing Hugging Face directories: every layout and dtype, bit for bit."""

import json
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from interop.checkpoints.hf import (
    HF_TOKENIZER_FILES,
    HFCheckpointReader,
    is_hf_dir,
    read_hf_config,
)
from interop.checkpoints.hf_write import parse_size, write_hf_checkpoint
from interop.errors import UserError
from interop.outputs import output_dir

TIED = {"lm_head.weight"}  # transformers does not save the tied copy in safetensors
DTYPES = [
    (torch.float32, np.float32),
    (torch.float16, np.float16),
    (torch.bfloat16, ml_dtypes.bfloat16),
]


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


def expected_state(model):
    return {k: v for k, v in model.state_dict().items() if k not in TIED}


def raw(value) -> bytes:
    """The bytes of a numpy array or torch tensor (bf16 included)."""
    if isinstance(value, torch.Tensor):
        value = value.contiguous()
        value = value.view(torch.int16) if value.dtype == torch.bfloat16 else value
        value = value.numpy()
    return np.ascontiguousarray(value).tobytes()


def save_bin_dir(path, model, state, shards=1):
    """A pytorch_model.bin directory (transformers 5 ignores safe_serialization=False)."""
    path.mkdir()
    (path / "config.json").write_text(model.config.to_json_string())
    names = sorted(state)
    if shards == 1:
        torch.save(state, path / "pytorch_model.bin")
        return
    weight_map = {}
    for i in range(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = names[i::shards]
        torch.save({n: state[n] for n in part}, path / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("dtype,np_dtype", DTYPES)
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_reader_matches_save_pretrained(tmp_path, dtype, np_dtype, layout):
    model = tiny_llama(dtype)
    model.save_pretrained(tmp_path, max_shard_size="8KB" if layout == "sharded" else "5GB")
    shards = list(tmp_path.glob("model-*-of-*.safetensors"))
    assert (len(shards) > 1) == (layout == "sharded")
    assert is_hf_dir(tmp_path)
    want = expected_state(model)
    with HFCheckpointReader(tmp_path) as reader:
        assert reader.names() == sorted(want)
        for name in reader.names():  # from the headers, before any data is read
            assert reader.shape(name) == tuple(want[name].shape)
            assert reader.dtype(name) == np.dtype(np_dtype)
        for name, array in reader:
            assert array.dtype == np.dtype(np_dtype) and array.shape == tuple(want[name].shape)
            assert raw(array) == raw(want[name])


@pytest.mark.parametrize("shards", [1, 3])
def test_reader_reads_pytorch_model_bin(tmp_path, shards):
    model = tiny_llama(torch.bfloat16)
    state = model.state_dict()  # tied lm_head included: torch.save keeps both names
    save_bin_dir(tmp_path / "bin", model, state, shards)
    assert is_hf_dir(tmp_path / "bin")
    with HFCheckpointReader(tmp_path / "bin") as reader:
        assert reader.names() == sorted(state)
        assert all(reader.dtype(n) == ml_dtypes.bfloat16 for n in state)
        got = dict(reader)
    assert sorted(got) == sorted(state)
    for name, tensor in state.items():
        assert got[name].dtype == ml_dtypes.bfloat16 and got[name].shape == tuple(tensor.shape)
        assert raw(got[name]) == raw(tensor)


def test_reader_reads_legacy_non_zip_pytorch_model_bin(tmp_path):
    model = tiny_llama(torch.float16)
    state = expected_state(model)
    (tmp_path / "config.json").write_text(model.config.to_json_string())
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with HFCheckpointReader(tmp_path) as reader:
        got = dict(reader)
    assert {n: raw(a) for n, a in got.items()} == {n: raw(t) for n, t in state.items()}


@pytest.mark.parametrize("dtype,np_dtype", DTYPES)
@pytest.mark.parametrize("max_shard_size", ["5GB", "8KB"])
def test_writer_round_trip_and_transformers_loads_it(tmp_path, dtype, np_dtype, max_shard_size):
    model = tiny_llama(dtype)
    src, dst = tmp_path / "src", tmp_path / "dst"
    model.save_pretrained(src)
    (src / "tokenizer_config.json").write_text('{"model_max_length": 7}')
    with HFCheckpointReader(src) as reader, output_dir(dst, overwrite=False) as tmp:
        write_hf_checkpoint(
            tmp, reader, read_hf_config(src), max_shard_size=max_shard_size, tokenizer_src=src
        )
    assert (dst / "tokenizer_config.json").read_text() == '{"model_max_length": 7}'
    assert read_hf_config(dst) == read_hf_config(src)
    state = expected_state(model)
    sharded = max_shard_size == "8KB"
    assert (dst / "model.safetensors").is_file() != sharded
    if sharded:
        index = json.loads((dst / "model.safetensors.index.json").read_text())
        files = sorted(set(index["weight_map"].values()))
        n = len(files)
        assert n > 1 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        assert sorted(index["weight_map"]) == sorted(state)
        assert index["metadata"]["total_size"] == sum(
            v.numel() * v.element_size() for v in state.values()
        )
        assert index["metadata"]["total_parameters"] == sum(v.numel() for v in state.values())
    with HFCheckpointReader(dst) as reader:
        assert reader.names() == sorted(state)
        assert all(reader.dtype(name) == np.dtype(np_dtype) for name in state)
        assert {n: raw(a) for n, a in reader} == {n: raw(t) for n, t in state.items()}
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=dtype).eval()
    ids = torch.arange(10).reshape(2, 5)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_writer_keeps_dtype_shape_and_bits_of_odd_arrays(tmp_path):
    nan_payload = np.array([0x7FC00001, 0xFF800000, 0x00000001], np.uint32).view(np.float32)
    arrays = {
        "scalar": np.array(2.5, np.float32),
        "transposed": np.arange(12, dtype=np.float16).reshape(3, 4).T,
        "nan_payload": nan_payload,
        "bf16": np.array([1.0, -0.0, np.inf], ml_dtypes.bfloat16),
        "ints": np.arange(4, dtype=np.int64),
    }
    write_hf_checkpoint(tmp_path, iter(arrays.items()), {"model_type": "x"})
    with HFCheckpointReader(tmp_path) as reader:
        for name, want in arrays.items():
            got = reader.get(name)
            assert got.shape == want.shape and got.dtype == want.dtype
            assert raw(got) == raw(want)


def test_writer_flushes_shards_while_consuming(tmp_path):
    """A shard is on disk before the tensors after it are even produced."""
    sizes_seen = []

    def tensors():
        for i in range(6):
            sizes_seen.append(len(list(tmp_path.glob(".shard-*.tmp"))))
            yield f"t{i}", np.full(250, i, np.float32)  # 1000 bytes each

    write_hf_checkpoint(tmp_path, tensors(), {}, max_shard_size="2KB")
    assert sizes_seen == [0, 0, 0, 1, 1, 2]  # a shard holds 2 tensors; flushed on the 3rd
    files = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not list(tmp_path.glob(".shard-*"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["t5"] == "model-00003-of-00003.safetensors"


def test_writer_copies_only_tokenizer_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for name in ("tokenizer.json", "merges.txt", "chat_template.jinja", "training_args.bin"):
        (src / name).write_text(name)
    write_hf_checkpoint(dst, [], {}, tokenizer_src=src)
    copied = {p.name for p in dst.iterdir()} - {"config.json", "model.safetensors"}
    assert copied == {"tokenizer.json", "merges.txt", "chat_template.jinja"}
    assert copied <= set(HF_TOKENIZER_FILES)


def test_parse_size_uses_decimal_units():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("10KB") == 10_000
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(123) == 123
    with pytest.raises(UserError, match="--max-shard-size"):
        parse_size("five gigs")


def test_index_naming_a_missing_shard(tmp_path):
    tiny_llama().save_pretrained(tmp_path, max_shard_size="8KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / victim).unlink()
    with pytest.raises(UserError, match=f"names shard {victim}, which is missing"):
        HFCheckpointReader(tmp_path)


def test_index_placing_a_tensor_in_the_wrong_shard(tmp_path):
    tiny_llama().save_pretrained(tmp_path, max_shard_size="8KB")
    path = tmp_path / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    files = sorted(set(index["weight_map"].values()))
    moved = next(n for n, f in index["weight_map"].items() if f == files[0])
    index["weight_map"][moved] = files[1]
    path.write_text(json.dumps(index))
    with pytest.raises(UserError, match=f"{files[1]}: lacks tensor {moved}"):
        HFCheckpointReader(tmp_path)


@pytest.mark.parametrize("keep", ["8 bytes", "half", "all but one byte"])
def test_truncated_safetensors_fails_in_the_constructor(tmp_path, keep):
    src, cut = tmp_path / "src", tmp_path / "cut"
    tiny_llama().save_pretrained(src)
    data = (src / "model.safetensors").read_bytes()
    n = {"8 bytes": 8, "half": len(data) // 2, "all but one byte": len(data) - 1}[keep]
    cut.mkdir()
    (cut / "config.json").write_text((src / "config.json").read_text())
    (cut / "model.safetensors").write_bytes(data[:n])
    with pytest.raises(UserError, match=r"cut/model.safetensors: truncated or corrupt"):
        HFCheckpointReader(cut)


def test_corrupt_pytorch_model_bin(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="pytorch_model.bin: cannot read PyTorch weights"):
        HFCheckpointReader(tmp_path)


def test_pytorch_model_bin_without_torch_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(UserError, match=r"needs the torch extra \(pip install 'jax-sft\[torch\]'"):
        HFCheckpointReader(tmp_path)


def test_missing_config_bad_json_and_missing_weights(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        read_hf_config(tmp_path)
    assert not is_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text("{\n  bad")
    with pytest.raises(UserError, match="config.json: line 2: invalid JSON"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="config.json: expected a JSON object"):
        read_hf_config(tmp_path)
    with pytest.raises(UserError, match="no model weights"):
        HFCheckpointReader(tmp_path)


def test_unknown_tensor_name_is_named(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    with HFCheckpointReader(tmp_path) as reader:
        with pytest.raises(UserError, match="no tensor named lm_head.weight"):
            reader.get("lm_head.weight")


def test_output_dir_refuses_existing_dst_without_overwrite(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=f"{dst} exists; pass --overwrite"):
        with output_dir(dst, overwrite=False):
            raise AssertionError("never reached")
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    assert (dst / "keep.txt").read_text() == "mine"


def test_output_dir_cleans_up_on_exception_and_replaces_on_success(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="crash mid-write"):
        with output_dir(dst, overwrite=True) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".dst.tmp-")
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("crash mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    with output_dir(dst, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (dst / "keep.txt").read_text() == "mine"  # old one intact until the end
    assert [p.name for p in dst.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]


def test_output_dir_creates_missing_parents(tmp_path):
    dst = tmp_path / "a" / "b" / "out"
    with output_dir(dst, overwrite=False) as tmp:
        (tmp / "x").write_text("x")
    assert (dst / "x").read_text() == "x"
    assert [p.name for p in dst.parent.iterdir()] == ["out"]
