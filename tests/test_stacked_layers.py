"""Decoder layers stored stacked and scanned (`model.scan_layers`) compute what the list
of layers computes, compile one layer whatever the depth, and never show outside a run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file
from train_fixtures import micro_batch, run_config, write_config

from interop.errors import UserError
from interop.tiny_configs import tiny_config
from jax_sft import cli
from jax_sft.checkpoints.carried_state import CarriedState
from jax_sft.checkpoints.deepspeed_export import write_transfer
from jax_sft.core.forward import forward_loss
from jax_sft.core.trees import leaf_at
from jax_sft.models import registry
from jax_sft.train import deepspeed_start
from jax_sft.train.run import make_engine

IDS = np.random.default_rng(0).integers(0, 250, (2, 12))


def pair(name: str, layers: int = 3, remat: bool = False):
    config = {**tiny_config(name), "num_hidden_layers": layers}
    return [
        registry.build_model(config, seed=3, scan_layers=scan, remat=remat)
        for scan in (False, True)
    ]


def call(model, *args, **kwargs):
    """model(*args, **kwargs), jitted (eager dispatch of every op is slow)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, a, k: nnx.merge(graphdef, s)(*a, **k))(state, args, kwargs)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_stacked_model_equals_the_list_of_layers(name):
    looped, scanned = pair(name)
    flat, stacked_flat = registry.flat_state(looped), registry.flat_state(scanned)
    assert list(stacked_flat) == list(flat)  # per-layer names, in the same order
    assert all(np.array_equal(flat[p], stacked_flat[p]) for p in flat)
    q = nnx.state(scanned, nnx.Param)["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.get_value().shape[0] == 3 and q.get_metadata()["axes"][0] == "layers"
    ids = jnp.asarray(IDS)
    np.testing.assert_allclose(call(scanned, ids), call(looped, ids), atol=2e-5)
    # Decoding: a prefill and one cached step agree, cache included.
    outs = []
    for model in (looped, scanned):
        logits, cache = call(model, ids[:, :8], cache=model.init_cache(2, 12))
        step, cache = call(model, ids[:, 8:9], cache=cache)
        outs.append((logits, step, cache.keys[-1]))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_stacked_gradients_are_the_per_layer_gradients():
    """Rematerialised, as deep models train (without remat, the run test below compares
    the trained weights)."""
    looped, scanned = pair("tiny-llama", remat=True)
    mb = micro_batch(IDS)
    grads = []
    for model in (looped, scanned):
        graphdef, state = nnx.split(model)
        params = nnx.to_pure_dict(state)
        g = jax.jit(jax.grad(lambda p, gd=graphdef: forward_loss(gd, p, mb)[0]))(params)
        grads.append(registry.flat_state(nnx.merge(graphdef, g)))
    assert list(grads[0]) == list(grads[1])
    for path in grads[0]:
        np.testing.assert_allclose(grads[1][path], grads[0][path], atol=2e-5, err_msg=path)


def test_scanned_forward_holds_one_layer_whatever_the_depth():
    """What bounds compile time: the looped program grows with every layer, the scanned
    one is the same program at any depth (`jax-sft bench --compile` times it)."""

    def matmuls(scan: bool, layers: int) -> int:
        config = {**tiny_config("tiny-llama"), "num_hidden_layers": layers}
        model = nnx.eval_shape(lambda: registry.build_model(config, scan_layers=scan))
        graphdef, state = nnx.split(model)
        ids = jax.ShapeDtypeStruct((2, 16), jnp.int32)
        text = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, ids).as_text()
        return text.count("dot_general")

    # a Llama layer: 7 projections, and q k^T and p v for the one block of 16 positions
    assert matmuls(False, 4) - matmuls(False, 2) == 2 * 9
    assert matmuls(True, 4) == matmuls(True, 2)


def run(tiny_base, out, scan: bool):
    return make_engine(
        run_config(
            tiny_base,
            out,
            model={"path": str(tiny_base), "scan_layers": scan},
            parallel={"data": 1, "fsdp": 4, "tensor": 2, "zero_stage": 3},
            optim={"eps": 1e-6, "weight_decay": 0.1},
            schedule={"type": "constant"},
            train={"micro_batch_size": 8},
        )
    )


def test_scanned_run_trains_exports_and_resumes_as_the_looped_one(tiny_base, tmp_path, monkeypatch):
    looped, scanned = run(tiny_base, tmp_path / "a", False), run(tiny_base, tmp_path / "b", True)
    kernel = scanned.state["params"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert kernel.ndim == 3 and kernel.addressable_shards[0].data.size < kernel.size
    losses = [[float(e.train_step()["loss"]) for _ in range(3)] for e in (looped, scanned)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
    assert abs(scanned.evaluate()["eval_loss"] - looped.evaluate()["eval_loss"]) <= 1e-5
    for engine in (looped, scanned):
        engine.export_hf(engine.out / "hf")
    want = load_file(tmp_path / "a" / "hf" / "model.safetensors")
    got = load_file(tmp_path / "b" / "hf" / "model.safetensors")
    assert sorted(got) == sorted(want)
    assert max(float(np.abs(got[n] - want[n]).max()) for n in want) <= 1e-6
    # The stacked train state (moments included) goes through a checkpoint unchanged, and
    # leaves it per layer for DeepSpeed (`convert --to deepspeed`'s transfer).
    saved = [engine.save_checkpoint() for engine in (looped, scanned)]
    for engine in (looped, scanned):
        engine.close()
    for i, path in enumerate(saved):
        (tmp_path / f"transfer{i}").mkdir()
        write_transfer(path, None, tmp_path / f"transfer{i}")
    for name in ("model.safetensors", "exp_avg.safetensors", "exp_avg_sq.safetensors"):
        files = [load_file(tmp_path / f"transfer{i}" / name) for i in range(2)]
        assert sorted(files[1]) == sorted(files[0])
        assert "model.layers.1.mlp.up_proj.weight" in files[0]
        assert max(float(np.abs(files[1][n] - files[0][n]).max()) for n in files[0]) <= 1e-6
    again = run(tiny_base, tmp_path / "b", True)
    # A DeepSpeed run's per-layer state continued stacked (`train.resume_from`).
    adam = next(p for p in looped.state["opt_state"] if hasattr(p, "mu"))
    carried = CarriedState(
        3,
        3,
        lambda p: np.asarray(leaf_at(looped.state["params"], p)),
        lambda p: (np.asarray(leaf_at(adam.mu, p)), np.asarray(leaf_at(adam.nu, p))),
    )
    monkeypatch.setattr(deepspeed_start, "carried_state", lambda config, path: carried)
    deepspeed_start.start_from_deepspeed(again, tmp_path)
    resumed = next(p for p in again.state["opt_state"] if hasattr(p, "nu"))
    for want, got in (
        (looped.state["params"], again.state["params"]),
        (adam.nu, resumed.nu),
    ):
        want = registry.flat_state(nnx.merge(looped.graphdef, want))
        got = registry.flat_state(nnx.merge(again.graphdef, got))
        assert list(got) == list(want) and all(np.array_equal(got[p], want[p]) for p in want)
    assert again.load_checkpoint()[0] is not None and again.global_steps == 3
    for a, b in zip(jax.tree.leaves(again.state), jax.tree.leaves(scanned.state), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_scan_where_it_cannot_run_is_refused_with_the_field(tiny_base, tmp_path, capsys):
    cfg = write_config(tmp_path, run_config(tiny_base, tmp_path / "out"))
    argv = ["train", str(cfg), "--set", "model.scan_layers=true", "--set", "lora.rank=4"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "model.scan_layers: only full fine-tuning (dense) trains stacked" in err[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="model.scan_layers: not supported for model_type 'gpt2'"):
        registry.build_model(tiny_config("tiny-gpt2"), scan_layers=True)


def test_compile_bench_takes_medians_of_alternating_rounds(monkeypatch, capsys):
    from jax_sft.bench import compile_time

    calls = []

    def fake(config, scan, batch, seq, remat):
        calls.append((config["num_hidden_layers"], scan, remat))
        depth, slow = config["num_hidden_layers"], 1.0 + len(calls) % 3  # rounds differ
        compile_s = (4.0 if scan else depth) * (2 if remat else 1) * slow
        return {"lower": 0.5 * slow, "compile": compile_s}

    monkeypatch.setattr(compile_time, "step_compile_seconds", fake)
    summary = compile_time.benchmark("llama-50m", (2, 8), 3, 1, 16)
    assert calls[:4] == [(2, False, False), (2, True, False), (2, False, True), (2, True, True)]
    assert len(calls) == 3 * 2 * 2 * 2
    row = summary["rows"][2]  # 8 layers, no remat; every case slowed alike over the rounds
    assert (row["layers"], row["remat"]) == (8, False)
    assert row["scan_over_loop_compile"] == pytest.approx(4.0 / 8)
    assert "| 8 | no | " in compile_time.table(summary)
    assert cli.main(["bench", "--compile", "--layers", "0"]) == 2
    assert "--layers: depths must be at least 1" in capsys.readouterr().err
