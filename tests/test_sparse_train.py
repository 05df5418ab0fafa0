"""Sparse training end to end: only the chosen entries move, and only they have state."""

import jax
import numpy as np
from flax import nnx
from tiny_hf import other_base
from train_fixtures import run_config

from interop.checkpoints.hf import HFCheckpointReader
from jax_sft.models import registry
from jax_sft.train.run import make_engine

DENSITY = 0.05


def nbytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_sparse_run_moves_only_the_index_set_and_keeps_state_for_it(tiny_base, tmp_path):
    sparse = make_engine(
        run_config(tiny_base, tmp_path / "s", sparse={"method": "random", "density": DENSITY})
    )
    dense = make_engine(run_config(tiny_base, tmp_path / "d"))
    indices = jax.device_get(sparse.state["indices"])
    values_count = sum(len(i) for i in indices.values())

    # Optimizer state: two moments per chosen entry and nothing for frozen leaves.
    opt_leaves = [x for x in jax.tree.leaves(sparse.state["opt_state"]) if x.ndim > 0]
    assert sorted(x.size for x in opt_leaves) == sorted(2 * [len(i) for i in indices.values()])
    index_bytes = nbytes(indices)
    assert (
        nbytes(sparse.state["opt_state"])
        <= DENSITY * nbytes(dense.state["opt_state"]) + index_bytes
    )
    args_sparse = sparse.train_step_memory()["argument_size_in_bytes"]
    args_dense = dense.train_step_memory()["argument_size_in_bytes"]
    params_bytes = nbytes(dense.state["params"])
    assert args_dense - args_sparse >= 2 * params_bytes * (1 - DENSITY) - 3 * 4 * values_count

    for _ in range(5):
        sparse.train_step()
    values = jax.device_get(sparse.state["trained"]["values"])
    assert all(np.abs(v).max() > 0 for v in values.values())  # every delta trained
    sparse.export_hf(tmp_path / "hf")

    with HFCheckpointReader(tiny_base) as base_reader, HFCheckpointReader(tmp_path / "hf") as out:
        base, merged = dict(base_reader), dict(out)
    table = registry.name_table(sparse.hf_config)
    shapes = registry.expected_shapes(sparse.hf_config)
    touched = {table.to_hf_name(p)[0]: p for p in indices}
    for name, before in base.items():
        after = merged[name]
        if name not in touched:
            assert np.array_equal(after.view(np.uint32), before.view(np.uint32)), name
            continue
        path = touched[name]
        _, transform = table.to_hf_name(path)
        ours_before = transform.to_ours(before, shapes[path]).reshape(-1)
        ours_after = transform.to_ours(after, shapes[path]).reshape(-1)
        outside = np.ones(ours_before.size, bool)
        outside[indices[path]] = False
        assert np.array_equal(
            ours_after[outside].view(np.uint32), ours_before[outside].view(np.uint32)
        )
        assert np.array_equal(ours_after[indices[path]], ours_before[indices[path]] + values[path])


def test_adapter_files_merge_into_the_base_exactly(tiny_base, tmp_path):
    from interop.sparse_format import fingerprint, merge_into, read_adapter
    from jax_sft.train.run import train

    cfg = run_config(
        tiny_base,
        tmp_path / "run",
        sparse={"method": "magnitude", "density": 0.02},
        train={"max_steps": 3},
    )
    train(cfg)
    config, deltas = read_adapter(tmp_path / "run" / "adapter")
    with HFCheckpointReader(tiny_base) as b, HFCheckpointReader(tmp_path / "run" / "hf") as m:
        base, merged = dict(b), dict(m)
    assert config["adapter_type"] == "sparse" and config["method"] == "magnitude"
    assert config["base_fingerprint"] == fingerprint(base, base.__getitem__)
    assert set(deltas) and set(deltas) <= set(base)
    for name, array in base.items():
        want = merge_into(array, *deltas[name]) if name in deltas else array
        assert np.array_equal(merged[name].view(np.uint32), want.view(np.uint32)), name
    for indices, values in deltas.values():
        assert indices.dtype == np.int32 and np.all(np.diff(indices) > 0)
        assert values.dtype == np.float32 and np.abs(values).max() > 0


def test_convert_merges_an_adapter_only_into_its_own_base(tiny_base, tmp_path, capsys):

    from jax_sft import cli
    from jax_sft.train.run import train

    train(
        run_config(
            tiny_base,
            tmp_path / "run",
            sparse={"method": "random", "num_tunable": 500},
            train={"max_steps": 2},
        )
    )
    adapter, merged = tmp_path / "run" / "adapter", tmp_path / "merged"
    assert cli.main(["convert", str(adapter), str(merged), "--to", "hf"]) == 2
    assert "--base" in capsys.readouterr().err
    argv = ["convert", str(adapter), str(merged), "--to", "hf", "--base", str(tiny_base)]
    assert cli.main(argv) == 0
    with HFCheckpointReader(merged) as a, HFCheckpointReader(tmp_path / "run" / "hf") as b:
        assert a.names() == b.names()
        assert all(
            np.array_equal(a.get(n).view(np.uint32), b.get(n).view(np.uint32)) for n in a.names()
        )

    other = other_base(tiny_base, tmp_path / "other-base")
    capsys.readouterr()
    assert (
        cli.main(
            ["convert", str(adapter), str(tmp_path / "m2"), "--to", "hf", "--base", str(other)]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"trained on another base model than {other} (base_fingerprint differs)")
    assert not (tmp_path / "m2").exists()


def test_fisher_scores_are_summed_squared_per_example_gradients(tiny_base, tmp_path):
    import jax.numpy as jnp

    from interop.data.batches import Batches
    from jax_sft.core.loss import loss_sum_and_count
    from jax_sft.sparse.fisher import fisher_scores
    from jax_sft.sparse.select import targets

    engine = make_engine(
        run_config(
            tiny_base,
            tmp_path / "f",
            sparse={"method": "fisher", "density": 0.01, "fisher_samples": 3},
        )
    )
    target = "layers.1.mlp.up_proj.kernel"
    indices = jax.device_get(engine.state["indices"])
    shapes = registry.expected_shapes(engine.hf_config)
    targeted = targets(shapes, engine.cfg.sparse.target)
    assert sum(len(i) for i in indices.values()) == round(
        0.01 * sum(np.prod(shapes[p]) for p in targeted)
    )
    params = jax.device_get(engine.state["params"])
    rows = Batches(
        engine.batches.examples,
        batch_size=1,
        seq_len=64,
        pad_id=engine.tokenizer.pad_token_id,
        packing=False,
        seed=1234,
    )
    scores = fisher_scores(engine.graphdef, params, rows, [target], 3)

    def row_grad(i):
        row = {k: jnp.asarray(v) for k, v in rows.batch(i).items()}

        def loss(w):
            p = jax.tree.map(lambda x: x, params)
            p["layers"][1]["mlp"]["up_proj"]["kernel"] = w
            m = nnx.merge(engine.graphdef, p)
            s, n = loss_sum_and_count(
                m(row["input_ids"], row["attention_mask"], row["positions"], row["segment_ids"]),
                row["labels"],
            )
            return s / n

        return np.asarray(jax.grad(loss)(params["layers"][1]["mlp"]["up_proj"]["kernel"]))

    manual = sum(row_grad(i) ** 2 for i in range(3))
    np.testing.assert_allclose(scores[target], manual, rtol=1e-4, atol=1e-12)
    assert float(manual.max()) > 0


def test_lt_sft_keeps_the_entries_that_changed_most_in_the_dense_phase(tiny_base, tmp_path):
    from jax_sft.sparse.select import magnitude_indices, proportional

    sparse = {"method": "lt-sft", "density": 0.02, "dense_steps": 3}
    lt = make_engine(run_config(tiny_base, tmp_path / "lt", sparse=sparse))
    dense = make_engine(run_config(tiny_base, tmp_path / "dense", train={"max_steps": 3}))
    base = {
        registry.path_str(p): np.asarray(v) for p, v in _flat(jax.device_get(dense.state["params"]))
    }
    for _ in range(3):
        dense.train_step()
    tuned = {
        registry.path_str(p): np.asarray(v) for p, v in _flat(jax.device_get(dense.state["params"]))
    }
    indices = jax.device_get(lt.state["indices"])
    shapes = {p: base[p].shape for p in indices}
    per = proportional(shapes, list(indices), sum(len(i) for i in indices.values()))
    for path, idx in indices.items():
        want = magnitude_indices(np.abs(tuned[path] - base[path]), per[path])
        assert np.array_equal(idx, want), path
    # training restarts from the base: the frozen weights are the untouched ones
    frozen = {
        registry.path_str(p): np.asarray(v) for p, v in _flat(jax.device_get(lt.state["params"]))
    }
    assert all(np.array_equal(frozen[p], base[p]) for p in base)


def _flat(tree):
    return [
        (tuple(k.key for k in path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
