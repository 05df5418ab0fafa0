"""SpIEL's moving index sets, densely trained leaves beside the deltas, delta penalties."""

import jax
import numpy as np
import pytest
from train_fixtures import run_config

from interop.errors import UserError
from jax_sft.sparse.spiel import adam_state, drop_fraction, regrow
from jax_sft.train.run import make_engine


def test_regrow_drops_smallest_values_and_grows_largest_gradients_outside_the_set():
    indices = np.array([1, 4, 6, 9], np.int32)
    values = np.array([0.5, -0.25, 0.75, 0.125], np.float32)
    mu = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    nu = np.array([5.0, 6.0, 7.0, 8.0], np.float32)
    grad = np.zeros(12, np.float32)
    grad[[4, 6, 0, 11]] = [9.0, 9.0, -2.0, 1.0]  # 4 and 6 are already in the set
    new_idx, new_val, new_mu, new_nu = regrow(indices, values, mu, nu, grad, 2)
    assert new_idx.tolist() == [0, 1, 6, 11]  # dropped 4 and 9, grew 0 and 11
    assert new_val.tolist() == [0.0, 0.5, 0.75, 0.0]
    assert new_mu.tolist() == [-2.0, 1.0, 3.0, 1.0]
    assert new_nu.tolist() == [4.0, 5.0, 7.0, 1.0]


def test_drop_fraction_decays_linearly_to_zero():
    assert drop_fraction(0, 100, 0.2) == pytest.approx(0.2)
    assert drop_fraction(50, 100, 0.2) == pytest.approx(0.1)
    assert drop_fraction(100, 100, 0.2) == 0.0


def test_spiel_moves_the_set_with_fixed_counts_and_compiles_the_step_once(tiny_base, tmp_path):
    sparse = {
        "method": "spiel",
        "density": 0.05,
        "reselect_every": 3,
        "accumulate_steps": 2,
        "drop_fraction": 0.3,
    }
    engine = make_engine(
        run_config(tiny_base, tmp_path / "sp", sparse=sparse, train={"max_steps": 10})
    )
    start = jax.device_get(engine.state["indices"])
    for _ in range(10):
        engine.train_step()
    end = jax.device_get(engine.state["indices"])
    assert engine._step_fn._cache_size() == 1
    assert len(engine.mode.spiel.swapped) == 3 and all(n > 0 for n in engine.mode.spiel.swapped)
    moved = 0
    for path, idx in start.items():
        assert end[path].shape == idx.shape
        assert np.all(np.diff(end[path]) > 0)  # sorted, no duplicates
        moved += int(np.sum(~np.isin(end[path], idx)))
    assert moved > 0
    adam = adam_state(engine.state["opt_state"])
    for path, idx in end.items():
        assert adam.mu["values"][path].shape == idx.shape


def test_dense_trainable_leaves_train_whole_and_take_state(tiny_base, tmp_path):
    sparse = {
        "method": "random",
        "density": 0.02,
        "dense_trainable": [r".*norm.*"],
        "target": [r".*(q_proj|v_proj).*"],
    }
    engine = make_engine(run_config(tiny_base, tmp_path / "dt", sparse=sparse))
    dense = engine.state["trained"]["dense"]
    assert dense and all("norm" in p for p in dense)
    before = jax.device_get(dense)
    for _ in range(3):
        engine.train_step()
    after = jax.device_get(engine.state["trained"]["dense"])
    assert all(np.abs(after[p] - before[p]).min() > 0 for p in before)  # every entry moved
    mu = adam_state(engine.state["opt_state"]).mu
    assert {p: v.shape for p, v in mu["dense"].items()} == {p: v.shape for p, v in before.items()}


def test_dense_trainable_that_matches_nothing_names_the_parameters(tiny_base, tmp_path):
    sparse = {"method": "random", "density": 0.02, "dense_trainable": ["nothing.*"]}
    with pytest.raises(UserError, match=r"sparse.dense_trainable: .*parameters: .*q_proj"):
        make_engine(run_config(tiny_base, tmp_path / "x", sparse=sparse))


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_penalty_shrinks_the_deltas(tiny_base, tmp_path, kind):
    def trained_norm(sparse_extra, out):
        sparse = {"method": "random", "density": 0.02, **sparse_extra}
        engine = make_engine(
            run_config(
                tiny_base,
                tmp_path / out,
                sparse=sparse,
                train={"max_steps": 6},
                optim={"learning_rate": 1e-2},
            )
        )
        for _ in range(6):
            engine.train_step()
        values = jax.device_get(engine.state["trained"]["values"])
        return sum(float(np.abs(v).sum()) for v in values.values())

    free = trained_norm({}, "free")
    held = trained_norm({"regularization": kind, "reg_weight": 1.0}, kind)
    assert held < 0.7 * free


def test_l1_penalty_has_subgradient_zero_at_zero():
    from interop.config import RunConfig
    from jax_sft.sparse.mode import SparseTraining

    sparse = {"method": "random", "regularization": "l1", "reg_weight": 0.5}
    mode = SparseTraining(RunConfig.model_validate({"sparse": sparse}))
    trained = {"values": {"w": np.array([0.0, 2.0, -3.0], np.float32)}, "dense": {}}
    assert float(mode.penalty(trained)) == 2.5
    grad = jax.grad(mode.penalty)(trained)["values"]["w"]
    assert grad.tolist() == [0.0, 0.5, -0.5]
