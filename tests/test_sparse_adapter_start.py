"""`jax-sft train` from a sparse adapter: continue its deltas, or train the merged model."""

import jax
import numpy as np
from tiny_hf import other_base
from train_fixtures import run_config, write_config

from interop.sparse_format import read_adapter
from jax_sft import cli
from jax_sft.checkpoints.loading import read_checkpoint
from jax_sft.models import registry
from jax_sft.train.run import make_engine, train


def test_a_run_continues_or_merges_an_adapter(tiny_base, tmp_path, capsys):
    sparse = {"method": "random", "density": 0.02}
    first = run_config(tiny_base, tmp_path / "first", sparse=sparse, train={"max_steps": 2})
    train(first)
    adapter = tmp_path / "first" / "adapter"
    _, deltas = read_adapter(adapter)
    ref_eval = make_engine(run_config(tmp_path / "first" / "hf", tmp_path / "x")).evaluate()

    sparse_again = make_engine(run_config(adapter, tmp_path / "again", sparse=sparse))
    assert sparse_again.model_dir == tiny_base
    indices = jax.device_get(sparse_again.state["indices"])
    values = jax.device_get(sparse_again.state["trained"]["values"])
    table = registry.name_table(sparse_again.hf_config)
    shapes = registry.expected_shapes(sparse_again.hf_config)
    assert len(indices) == len(deltas)
    for path, idx in indices.items():
        name, transform = table.to_hf_name(path)
        hf_idx = transform.hf_flat_index(idx, shapes[path])
        order = np.argsort(hf_idx)
        assert np.array_equal(hf_idx[order], deltas[name][0])
        assert np.array_equal(values[path][order], deltas[name][1])
    assert sparse_again.evaluate()["eval_loss"] == ref_eval["eval_loss"]

    merged = make_engine(run_config(adapter, tmp_path / "merged"))
    assert merged.mode.key == "params"
    _, _, exported = read_checkpoint(tmp_path / "first" / "hf")
    params = {
        registry.path_str(tuple(k.key for k in p)): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(merged.state["params"])[0]
    }
    assert all(np.array_equal(params[p], exported[p]) for p in exported)

    other = other_base(tiny_base, tmp_path / "other-base")
    cfg = write_config(tmp_path, run_config(adapter, tmp_path / "wrong", sparse=sparse))
    capsys.readouterr()
    assert cli.main(["train", str(cfg), "--set", f"model.base={other}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"jax-sft: error: {adapter}: trained on another base model than {other} "
        "(base_fingerprint differs)"
    ]
    assert not (tmp_path / "wrong").exists()
