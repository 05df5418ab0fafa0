"""DeepSpeed JSON configs as RunConfig overrides: mapping, DeepSpeed's rules, notes, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from deepspeed.runtime.lr_schedules import WarmupCosineLR, WarmupDecayLR

from interop.config import RunConfig
from interop.config_files import deep_merge, load_config
from interop.errors import UserError
from interop.frontends.deepspeed_json import overrides_from_deepspeed
from interop.schedules import learning_rates


def _write(tmp_path: Path, data: dict | str, name: str = "ds.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def _validated(tmp_path: Path, overrides: dict, base: dict | None = None) -> RunConfig:
    """Overrides merged over a YAML base, written out and read back by `load_config`."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(deep_merge(base or {}, overrides)))
    return load_config(path)


def dschat_ds_config(micro: int, accumulation: int, world: int) -> dict:
    """`get_train_ds_config(offload=False, dtype='bf16', stage=2)` as step-1 main.py edits it."""
    return {
        "train_batch_size": micro * world * accumulation,
        "train_micro_batch_size_per_gpu": micro,
        "steps_per_print": 10,
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "offload_param": {"device": "none"},
            "offload_optimizer": {"device": "none"},
            "stage3_param_persistence_threshold": 1e4,
            "stage3_max_live_parameters": 3e7,
            "stage3_prefetch_bucket_size": 3e7,
            "memory_efficient_linear": False,
        },
        "bfloat16": {"enabled": True},
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
        "hybrid_engine": {
            "enabled": False,
            "max_out_tokens": 512,
            "inference_tp_size": 1,
            "release_inference_cache": False,
            "pin_parameters": True,
            "tp_gather_partition_size": 8,
        },
        "tensorboard": {
            "enabled": True,
            "output_path": "out/ds_tensorboard_logs/",
            "job_name": "step1_model_tensorboard",
        },
    }


def test_dschat_generated_config_is_accepted(tmp_path: Path) -> None:
    # run_1.3b.sh: per-device batch 16 (main.py's default), accumulation 8, one GPU.
    path = _write(tmp_path, dschat_ds_config(micro=16, accumulation=8, world=1))
    overrides, notes = overrides_from_deepspeed(path)
    assert overrides["train"] == {"micro_batch_size": 16, "gradient_accumulation_steps": 8}
    assert overrides["optim"] == {"grad_clip": 1.0}
    assert overrides["model"] == {"dtype": "bfloat16"}
    assert overrides["parallel"] == {"zero_stage": 2}
    assert overrides["logging"]["tensorboard"] is True
    for key in (
        "zero_optimization.overlap_comm",
        "zero_optimization.offload_param",
        "steps_per_print",
        "hybrid_engine",
        "prescale_gradients",
    ):
        assert any(f"{key} has no effect" in note for note in notes), key
    assert all(note.startswith(f"{path}: ") for note in notes)
    cfg = _validated(tmp_path, overrides)
    assert cfg.train.micro_batch_size == 16 and cfg.train.gradient_accumulation_steps == 8
    assert cfg.model.dtype == "bfloat16" and cfg.parallel.zero_stage == 2


def test_dschat_config_on_two_gpus(tmp_path: Path) -> None:
    path = _write(tmp_path, dschat_ds_config(micro=4, accumulation=2, world=2))
    overrides, _ = overrides_from_deepspeed(path, data_parallel_size=2)
    assert overrides["train"] == {"micro_batch_size": 4, "gradient_accumulation_steps": 2}


@pytest.mark.parametrize(
    ("given", "dp", "micro", "accumulation"),
    [
        ({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4}, 2, 4, 4),
        ({"train_batch_size": 32, "gradient_accumulation_steps": 2}, 2, 8, 2),
        ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, 2, 4, 2),
        ({"train_batch_size": 32}, 4, 8, 1),
        ({"train_micro_batch_size_per_gpu": 4}, 8, 4, 1),
        (
            {
                "train_batch_size": 16,
                "train_micro_batch_size_per_gpu": 4,
                "gradient_accumulation_steps": 2,
            },
            2,
            4,
            2,
        ),
    ],
)
def test_batch_size_rule(
    tmp_path: Path, given: dict, dp: int, micro: int, accumulation: int
) -> None:
    overrides, _ = overrides_from_deepspeed(_write(tmp_path, given), data_parallel_size=dp)
    assert overrides["train"] == {
        "micro_batch_size": micro,
        "gradient_accumulation_steps": accumulation,
    }


def test_inconsistent_batch_sizes_name_file_and_numbers(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "train_batch_size": 32,
            "train_micro_batch_size_per_gpu": 4,
            "gradient_accumulation_steps": 2,
        },
    )
    expected = (
        f"{path}: train_batch_size 32 != train_micro_batch_size_per_gpu 4 x "
        "gradient_accumulation_steps 2 x data-parallel size 2"
    )
    with pytest.raises(UserError) as info:
        overrides_from_deepspeed(path, data_parallel_size=2)
    assert str(info.value) == expected
    with pytest.raises(UserError, match="train_batch_size 30 != .* 4 x .* 3 x .* 2"):
        overrides_from_deepspeed(
            _write(tmp_path, {"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4}),
            data_parallel_size=2,
        )


def test_auto_values_are_left_to_the_yaml(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "train_batch_size": "auto",
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"},
            "zero_optimization": {"stage": "auto"},
            "optimizer": {
                "type": "AdamW",
                "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
            },
            "scheduler": {
                "type": "WarmupDecayLR",
                "params": {
                    "total_num_steps": "auto",
                    "warmup_min_lr": "auto",
                    "warmup_max_lr": "auto",
                    "warmup_num_steps": "auto",
                },
            },
        },
    )
    overrides, _ = overrides_from_deepspeed(path)
    assert overrides == {"schedule": {"type": "warmup_decay_lr", "warmup_type": "log"}}
    base = {"optim": {"learning_rate": 3e-4}, "train": {"micro_batch_size": 2}}
    cfg = _validated(tmp_path, overrides, base)
    assert cfg.optim.learning_rate == 3e-4 and cfg.train.micro_batch_size == 2


def test_docs_warmup_decay_example_matches_deepspeed(tmp_path: Path) -> None:
    scheduler = {
        "type": "WarmupDecayLR",
        "params": {
            "total_num_steps": 3000,
            "warmup_min_lr": 0,
            "warmup_max_lr": 0.001,
            "warmup_num_steps": 1000,
        },
    }
    overrides, notes = overrides_from_deepspeed(_write(tmp_path, {"scheduler": scheduler}))
    assert notes == []
    assert overrides["schedule"] == {
        "type": "warmup_decay_lr",
        "warmup_steps": 1000,
        "warmup_type": "log",
        "warmup_min_lr": 0,
        "total_steps": 3000,
    }
    assert overrides["optim"] == {"learning_rate": 0.001}
    cfg = _validated(tmp_path, overrides)
    ours = learning_rates(cfg.optim.learning_rate, cfg.schedule, 3200)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    reference = WarmupDecayLR(optimizer, **scheduler["params"])
    expected = []
    for _ in range(3200):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-10)


def test_warmup_decay_without_max_lr_peaks_at_deepspeed_default(tmp_path: Path) -> None:
    data = {
        "optimizer": {"type": "Adam", "params": {"lr": 5e-5}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 10}},
    }
    overrides, notes = overrides_from_deepspeed(_write(tmp_path, data))
    assert overrides["optim"]["learning_rate"] == 0.001
    assert any(
        "optimizer.params.lr 5e-05 is replaced by WarmupDecayLR's peak 0.001" in n for n in notes
    )


def test_warmup_cosine_uses_optimizer_lr(tmp_path: Path) -> None:
    params = {
        "total_num_steps": 50,
        "warmup_min_ratio": 0.1,
        "warmup_num_steps": 5,
        "cos_min_ratio": 0.01,
        "warmup_type": "linear",
    }
    data = {
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-4, "weight_decay": 0.1}},
        "scheduler": {"type": "WarmupCosineLR", "params": params},
    }
    overrides, _ = overrides_from_deepspeed(_write(tmp_path, data))
    cfg = _validated(tmp_path, overrides)
    assert cfg.optim.learning_rate == 2e-4 and cfg.schedule.type == "warmup_cosine_lr"
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    reference = WarmupCosineLR(optimizer, **params)
    expected = []
    for _ in range(60):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    np.testing.assert_array_equal(learning_rates(2e-4, cfg.schedule, 60), expected)


def test_optimizer_defaults_are_deepspeeds(tmp_path: Path) -> None:
    overrides, _ = overrides_from_deepspeed(_write(tmp_path, {"optimizer": {"type": "AdamW"}}))
    assert overrides["optim"] == {
        "learning_rate": 1e-3,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.0,
    }
    data = {"optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}
    overrides, notes = overrides_from_deepspeed(_write(tmp_path, data))
    assert overrides["optim"]["weight_decay"] == 0.01
    assert any("optimizer.params.torch_adam has no effect" in note for note in notes)


def test_adam_is_decoupled_unless_adam_w_mode_false(tmp_path: Path) -> None:
    data = {"optimizer": {"type": "Adam", "params": {"weight_decay": 0.1}}}
    overrides, _ = overrides_from_deepspeed(_write(tmp_path, data))
    assert overrides["optim"]["weight_decay"] == 0.1
    data["optimizer"]["params"]["adam_w_mode"] = False
    with pytest.raises(UserError, match=r"ds\.json: optimizer\.params\.adam_w_mode false"):
        overrides_from_deepspeed(_write(tmp_path, data))
    data["optimizer"]["params"]["weight_decay"] = 0.0  # without decay, Adam is AdamW
    overrides_from_deepspeed(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"optimizer": {"type": "Lamb"}}, r"optimizer\.type 'Lamb' is not supported"),
        ({"optimizer": {"type": "AdamW", "params": {"max_grad_norm": 1}}}, "gradient_clipping"),
        ({"optimizer": {"type": "AdamW", "params": {"amsgrad": True}}}, "AMSGrad"),
        ({"optimizer": {"type": "AdamW", "params": {"momentum": 0.9}}}, "params.momentum"),
        ({"scheduler": {"type": "OneCycle"}}, r"scheduler\.type 'OneCycle' is not supported"),
        (
            {"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 0}}},
            r"warmup_num_steps must be an integer >= 1, got 0",
        ),
        (
            {"scheduler": {"type": "WarmupCosineLR", "params": {"warmup_max_lr": 1}}},
            r"warmup_max_lr is not a parameter of WarmupCosineLR",
        ),
        ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "cannot both be true"),
        ({"zero_optimization": {"stage": 4}}, r"zero_optimization\.stage must be 0, 1, 2 or 3"),
        ({"train_micro_batch_size_per_gpu": 0}, "must be an integer >= 1, got 0"),
        ({"gradient_clipping": "big"}, r"gradient_clipping must be a number"),
        ([1, 2], "the top level must be a JSON object"),
    ],
)
def test_mistakes_are_user_errors(tmp_path: Path, data: object, match: str) -> None:
    with pytest.raises(UserError, match=match):
        overrides_from_deepspeed(_write(tmp_path, json.dumps(data)))


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, '{\n  "train_batch_size": 8,\n  "gradient_clipping": ,\n}\n')
    with pytest.raises(UserError, match=rf"^{path}:3:24: invalid JSON"):
        overrides_from_deepspeed(path)
    with pytest.raises(UserError, match="duplicate key 'fp16'"):
        overrides_from_deepspeed(_write(tmp_path, '{"fp16": {}, "fp16": {}}'))
    with pytest.raises(UserError, match="no such file"):
        overrides_from_deepspeed(tmp_path / "missing.json")


def test_unknown_keys_are_reported_not_dropped(tmp_path: Path) -> None:
    data = {
        "train_micro_batch_size_per_gpu": 2,
        "my_setting": 1,
        "zero_optimization": {"stage": 1, "stage_3_typo": 1},
        "fp16": {"enabled": True, "loss_scale_window": 100},
    }
    overrides, notes = overrides_from_deepspeed(_write(tmp_path, data))
    assert overrides["model"] == {"dtype": "float16"}
    assert any("my_setting is not a DeepSpeed config key" in note for note in notes)
    assert any("zero_optimization.stage_3_typo is not a DeepSpeed ZeRO option" in n for n in notes)
    assert any("fp16.loss_scale_window has no effect" in note for note in notes)


def test_precision_sections(tmp_path: Path) -> None:
    overrides, _ = overrides_from_deepspeed(_write(tmp_path, {"bf16": {"enabled": False}}))
    assert overrides["model"] == {"dtype": "float32"}
    overrides, _ = overrides_from_deepspeed(_write(tmp_path, {"bf16": {"enabled": True}}))
    assert overrides["model"] == {"dtype": "bfloat16"}
    overrides, _ = overrides_from_deepspeed(_write(tmp_path, {"gradient_clipping": 0}))
    assert overrides == {"optim": {"grad_clip": None}}
    assert _validated(tmp_path, overrides).optim.grad_clip is None


def test_merge_is_deep_and_does_not_mutate() -> None:
    base = {"train": {"seed": 1, "epochs": 2}, "model": {"tiny": "tiny-llama"}}
    merged = deep_merge(base, {"train": {"epochs": 3}, "optim": {"betas": [0.9, 0.99]}})
    assert merged == {
        "train": {"seed": 1, "epochs": 3},
        "model": {"tiny": "tiny-llama"},
        "optim": {"betas": [0.9, 0.99]},
    }
    assert base["train"]["epochs"] == 2
