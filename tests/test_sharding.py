"""Sharded training on 8 virtual CPU devices equals the single-device run (fp32)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from train_fixtures import run_config

from jax_sft.sharding.placement import place_batch
from jax_sft.train.run import make_engine

STEPS = 5
GLOBAL_BATCH = 8
# Sharded sums add in another order, so gradients differ in their last bits. Adam's
# m / (sqrt(v) + eps) magnifies that for entries whose gradient cancels down to ~eps:
# with eps 1e-8 the parameters differ by up to 2.4e-6 after 5 steps, with 1e-6 by < 1e-6.
EPS = 1e-6
CASES = {
    "zero0": {"zero_stage": 0, "data": 8},
    "zero1": {"zero_stage": 1, "data": 8},
    "zero2": {"zero_stage": 2, "data": 8},
    "zero3": {"zero_stage": 3, "data": 8},
    "tensor2": {"data": 4, "tensor": 2},
    "fsdp4_tensor2": {"data": 1, "fsdp": 4, "tensor": 2},
}


def train_steps(tiny_base, out, parallel):
    dp = parallel.get("data", 1) * parallel.get("fsdp", 1)
    engine = make_engine(
        run_config(
            tiny_base,
            out,
            parallel=parallel,
            schedule={"type": "constant"},
            optim={"eps": EPS},
            train={"micro_batch_size": GLOBAL_BATCH // dp, "gradient_accumulation_steps": 1},
        )
    )
    losses = [float(engine.train_step()["loss"]) for _ in range(STEPS)]
    return engine, losses, [np.asarray(x) for x in jax.tree.leaves(engine.state["params"])]


@pytest.fixture(scope="module")
def single(tiny_base, tmp_path_factory):
    return train_steps(tiny_base, tmp_path_factory.mktemp("single"), {"data": 1})


@pytest.mark.parametrize("name", sorted(CASES))
def test_sharded_steps_equal_single_device(single, tiny_base, tmp_path, name):
    single_engine, want_losses, want_params = single
    engine, losses, params = train_steps(tiny_base, tmp_path, CASES[name])
    assert len(engine.mesh.devices.flat) == 8
    rel = np.abs(np.array(losses) - np.array(want_losses)) / np.abs(np.array(want_losses))
    param_diff = max(float(np.abs(a - b).max()) for a, b in zip(params, want_params, strict=True))
    assert rel.max() <= 1e-6  # fp32 sums in another order: equal to a few ulps
    assert param_diff <= 1e-6
    if CASES[name].get("zero_stage") == 3 or "fsdp" in CASES[name]:
        embed = engine.state["params"]["embed_tokens"]["embedding"]
        assert embed.addressable_shards[0].data.size < embed.size  # really sharded
    # Evaluation splits its rows over the data-parallel axes, and agrees.
    batch = place_batch(engine.eval_batches.batch(0), engine.placement.rows)
    compiled = engine._eval_step.lower(engine.state, batch).compile()
    assert compiled.input_shardings[0][1]["input_ids"].spec == P(("data", "fsdp"), None)
    want_eval = single_engine.evaluate()["eval_loss"]
    assert abs(engine.evaluate()["eval_loss"] - want_eval) <= 1e-6 * want_eval


def test_zero_stages_shrink_per_device_state_bytes(tiny_base, tmp_path, capsys):
    from interop.config_files import dump_config
    from jax_sft import cli

    state_bytes = {}
    for stage in (0, 1, 2, 3):
        engine = make_engine(
            run_config(
                tiny_base,
                tmp_path / str(stage),
                train={"micro_batch_size": 1},
                parallel={"zero_stage": stage, "data": 8},
            )
        )
        memory = engine.train_step_memory()
        batch = jax.eval_shape(lambda e=engine: e.global_batch(0))
        per_device_batch = sum(v.size * v.dtype.itemsize for v in batch.values()) // 8
        state_bytes[stage] = memory["argument_size_in_bytes"] - per_device_batch - 4  # lr
    assert state_bytes[0] > state_bytes[1] >= state_bytes[2] > state_bytes[3]
    assert state_bytes[3] * 6 <= state_bytes[0]
    config = tmp_path / "run.yaml"
    config.write_text(
        dump_config(
            run_config(
                tiny_base,
                tmp_path / "cli",
                train={"micro_batch_size": 1},
                parallel={"zero_stage": 3, "data": 8},
            )
        )
    )
    assert cli.main(["bench", str(config), "--memory", "--json"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert summary["argument_size_in_bytes"] == state_bytes[3] + per_device_batch + 4


@pytest.mark.parametrize(
    ("parallel", "message"),
    [
        (
            {"data": 3, "fsdp": -1},
            "parallel: data=3, fsdp=-1, tensor=1 does not divide the 8 devices",
        ),
        ({"data": 4, "fsdp": 4}, "parallel: data=4, fsdp=4, tensor=1 needs 16 devices, found 8"),
        (
            {"data": 1, "tensor": 8},
            "parallel.tensor: 8 does not divide the model's 4 attention heads",
        ),
    ],
)
def test_bad_meshes_exit_2_naming_the_field(tiny_base, tmp_path, capsys, parallel, message):
    from interop.config_files import dump_config
    from jax_sft import cli

    config = tmp_path / "run.yaml"
    config.write_text(dump_config(run_config(tiny_base, tmp_path / "out", parallel=parallel)))
    assert cli.main(["train", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"jax-sft: error: {message}"


def test_global_batch_not_divisible_by_data_parallel_size(tiny_base, tmp_path, capsys):
    import json

    from interop.config_files import dump_config
    from jax_sft import cli

    config = tmp_path / "run.yaml"
    config.write_text(dump_config(run_config(tiny_base, tmp_path / "out", parallel={"data": 8})))
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 12, "gradient_accumulation_steps": 1}))
    assert cli.main(["train", str(config), "--deepspeed_config", str(ds)]) == 2
    err = capsys.readouterr().err
    assert str(ds) in err and "12" in err and "8" in err


def test_zero3_checkpoint_on_8_devices_resumes_on_1(tiny_base, tmp_path):
    def engine_for(parallel, micro):
        return make_engine(
            run_config(
                tiny_base,
                tmp_path / "run",
                parallel=parallel,
                schedule={"type": "constant"},
                optim={"eps": EPS},
                train={"micro_batch_size": micro, "max_steps": 10},
            )
        )

    sharded = engine_for({"zero_stage": 3, "data": 8}, 1)
    for _ in range(3):
        sharded.train_step()
    sharded.save_checkpoint()
    sharded.close()
    want = float(sharded.train_step()["loss"])

    single = engine_for({"data": 1}, 8)
    assert single.restore_latest() == 3
    assert len(single.state["params"]["norm"]["scale"].sharding.device_set) == 1
    got = float(single.train_step()["loss"])
    assert abs(got - want) / want <= 1e-6
