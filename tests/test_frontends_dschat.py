"""DeepSpeed-Chat step-1 flags: the parser matches main.py, the mapping fills a RunConfig."""

import json
import re
from pathlib import Path

import pytest

from interop.config import RunConfig
from interop.errors import UserError
from interop.frontends.dschat import run_config_from_dschat
from interop.frontends.dschat_flags import dschat_parser

# Every flag of step-1 main.py with its default, and DeepSpeed's add_config_arguments.
MAIN_PY_DEFAULTS = {
    "data_path": ["Dahoas/rm-static"],
    "data_split": "2,4,4",
    "sft_only_data_path": [],
    "data_output_path": "/tmp/data_files/",
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 16,
    "max_seq_len": 512,
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "num_train_epochs": 1,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "cosine",
    "num_warmup_steps": 0,
    "output_dir": None,
    "seed": 1234,
    "local_rank": -1,
    "gradient_checkpointing": False,
    "dropout": None,
    "offload": False,
    "dtype": "fp16",
    "zero_stage": 0,
    "lora_dim": 0,
    "lora_module_name": "decoder.layers.",
    "only_optimize_lora": False,
    "lora_learning_rate": 5e-4,
    "compute_fp32_loss": False,
    "enable_tensorboard": False,
    "tensorboard_path": "step1_tensorboard",
    "add_eot_token": False,
    "eot_token": "<|endoftext|>",
    "print_loss": False,
    "deepspeed": False,
    "deepspeed_config": None,
    "deepscale": False,
    "deepscale_config": None,
}


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A DeepSpeed-Chat-like working directory: a local model and data/{train,eval}.json."""
    model = tmp_path / "opt-1.3b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "opt"}))
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"prompt": "Human: hi", "chosen": "Assistant: hello"}]
    for name in ("train.json", "eval.json"):
        (data / name).write_text(json.dumps(rows))
    return tmp_path


def _base(app: Path) -> list[str]:
    return ["--model_name_or_path", str(app / "opt-1.3b"), "--data_path", "local/jsonfile"]


def test_parser_has_every_main_py_flag_and_default() -> None:
    args = dschat_parser().parse_args(["--model_name_or_path", "m"])
    ours = {k: v for k, v in vars(args).items() if k.startswith("sparse_")}
    assert ours and all(v is None for v in ours.values())  # our additions are off by default
    rest = {k: v for k, v in vars(args).items() if k != "model_name_or_path" and k not in ours}
    assert rest == MAIN_PY_DEFAULTS


def test_run_1_3b_single_gpu_flags(app: Path) -> None:
    # training_scripts/opt/single_gpu/run_1.3b.sh, with OUTPUT=./output and ZERO_STAGE=0,
    # a local model directory for facebook/opt-1.3b and local/jsonfile data.
    argv = [
        "--model_name_or_path", "opt-1.3b", "--data_path", "local/jsonfile",
        "--gradient_accumulation_steps", "8", "--lora_dim", "128", "--zero_stage", "0",
        "--enable_tensorboard", "--tensorboard_path", "./output",
        "--deepspeed", "--output_dir", "./output",
    ]  # fmt: skip
    config, notes = run_config_from_dschat(argv, cwd=app)
    cfg = RunConfig.model_validate(config)
    assert cfg.model.path == str(app / "opt-1.3b") and cfg.data.tokenizer == cfg.model.path
    assert cfg.model.tiny is None and cfg.model.dtype == "float16" and not cfg.model.remat
    assert [(s.path, s.format) for s in cfg.data.sources] == [
        (str(app / "data" / "train.json"), "prompt_chosen")
    ]
    assert [(s.path, s.format) for s in cfg.data.eval_sources] == [
        (str(app / "data" / "eval.json"), "prompt_chosen")
    ]
    assert cfg.data.data_split == "2,4,4" and cfg.data.phase == 1
    assert cfg.data.loss_on == "all" and cfg.data.packing is False
    assert cfg.data.max_seq_len == 512 and cfg.data.seed == 1234
    assert cfg.optim.learning_rate == 1e-3 and cfg.optim.weight_decay == 0.0
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.grad_clip == 1.0
    assert cfg.schedule.type == "cosine" and cfg.schedule.warmup_steps == 0
    assert cfg.train.micro_batch_size == 16 and cfg.train.eval_batch_size == 16
    assert cfg.train.gradient_accumulation_steps == 8
    assert cfg.train.epochs == 1 and cfg.train.max_steps is None
    assert cfg.train.output_dir == str(app / "output") and cfg.train.seed == 1234
    assert cfg.parallel.zero_stage == 0
    assert cfg.logging.style == "dschat" and cfg.logging.tensorboard is True
    assert cfg.logging.tensorboard_dir == str(
        app / "output" / "ds_tensorboard_logs" / "step1_model_tensorboard"
    )
    assert cfg.lora.rank == 128 and cfg.lora.alpha == 1.0  # DS-Chat's scale 1/lora_dim
    assert cfg.lora.target_modules == r".*decoder\.layers\..*"
    assert cfg.lora.dense_trainable == [".*"] and cfg.lora.learning_rate == 5e-4
    assert not any(note.startswith("--lora") for note in notes)
    assert any(note.startswith("--deepspeed: accepted") for note in notes)


def test_flags_reach_their_fields(app: Path) -> None:
    argv = _base(app) + [
        "--data_split", "10,0,0", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "2", "--max_seq_len", "128",
        "--learning_rate", "9.65e-6", "--weight_decay", "0.1", "--num_train_epochs", "3",
        "--lr_scheduler_type", "linear", "--num_warmup_steps", "5", "--seed", "7",
        "--gradient_checkpointing", "--dropout", "0.1", "--dtype", "bf16", "--zero_stage", "3",
        "--add_eot_token", "--eot_token", "<eot>", "--print_loss",
    ]  # fmt: skip
    cfg = RunConfig.model_validate(run_config_from_dschat(argv, cwd=app)[0])
    assert cfg.data.data_split == "10,0,0" and cfg.data.max_seq_len == 128
    assert cfg.train.micro_batch_size == 4 and cfg.train.eval_batch_size == 2
    assert cfg.optim.learning_rate == 9.65e-6 and cfg.optim.weight_decay == 0.1
    assert cfg.train.epochs == 3 and cfg.schedule.type == "linear"
    assert cfg.schedule.warmup_steps == 5 and cfg.train.seed == 7 and cfg.data.seed == 7
    assert cfg.model.remat and cfg.model.dropout == 0.1 and cfg.model.dtype == "bfloat16"
    assert cfg.parallel.zero_stage == 3
    assert cfg.data.add_eot_token and cfg.data.eot_token == "<eot>"
    assert cfg.logging.print_loss and not cfg.logging.tensorboard


def test_fp32_dtype_is_accepted(app: Path) -> None:
    config, _ = run_config_from_dschat(_base(app) + ["--dtype", "fp32"], cwd=app)
    assert config["model"]["dtype"] == "float32"


def test_hub_dataset_name_errors(app: Path) -> None:
    argv = ["--model_name_or_path", str(app / "opt-1.3b")]  # data_path default: Dahoas/rm-static
    with pytest.raises(UserError, match=r"^--data_path Dahoas/rm-static: .*never downloaded"):
        run_config_from_dschat(argv, cwd=app)


def test_hub_model_name_errors(app: Path) -> None:
    argv = ["--model_name_or_path", "facebook/opt-1.3b", "--data_path", "local/jsonfile"]
    with pytest.raises(UserError, match=r"^--model_name_or_path facebook/opt-1.3b: .*never"):
        run_config_from_dschat(argv, cwd=app)


def test_local_jsonfile_needs_both_files(app: Path) -> None:
    (app / "data" / "eval.json").unlink()
    with pytest.raises(UserError, match=r"--data_path local/jsonfile: needs both .*eval\.json"):
        run_config_from_dschat(_base(app), cwd=app)


def test_local_files_and_directories_are_sources(app: Path) -> None:
    (app / "extra.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n')
    argv = _base(app) + ["extra.jsonl", str(app / "data")]
    config, _ = run_config_from_dschat(argv, cwd=app)
    paths = [source["path"] for source in config["data"]["sources"]]
    train = str(app / "data" / "train.json")
    assert paths == [train, str(app / "extra.jsonl"), train]
    assert len(config["data"]["eval_sources"]) == 2


def test_unknown_flag_errors() -> None:
    with pytest.raises(UserError, match=r"unrecognized arguments: --not_a_flag"):
        run_config_from_dschat(["--model_name_or_path", "m", "--not_a_flag"], cwd=Path("."))


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--lr_scheduler_type", "polynomial"],
         r"--lr_scheduler_type polynomial: not implemented \(supported: linear, cosine, constant"),
        (["--lr_scheduler_type", "inverse_sqrt"], r"argument --lr_scheduler_type: invalid choice"),
        (["--learning_rate", "fast"], r"argument --learning_rate: invalid float value"),
        (["--per_device_train_batch_size", "0"],
         r"^--per_device_train_batch_size 0: train\.micro_batch_size: Input should be greater"),
        (["--zero_stage", "4"], r"^--zero_stage 4: parallel\.zero_stage:"),
        (["--data_split", "6,4"], r"^--data_split 6,4: data\.data_split: expected three"),
        (["--dtype", "int8"], r"argument --dtype: invalid choice"),
    ],
)  # fmt: skip
def test_bad_values_name_the_flag(app: Path, extra: list[str], match: str) -> None:
    with pytest.raises(UserError, match=match):
        run_config_from_dschat(_base(app) + extra, cwd=app)


def test_missing_model_flag_errors() -> None:
    with pytest.raises(UserError, match="required: --model_name_or_path"):
        run_config_from_dschat([], cwd=Path("."))


def test_no_effect_flags_are_reported(app: Path) -> None:
    argv = _base(app) + [
        "--offload", "--lora_module_name", "model.layers.", "--only_optimize_lora",
        "--lora_learning_rate", "1e-3", "--compute_fp32_loss",
        "--local_rank", "0", "--data_output_path", "/tmp/x",
    ]  # fmt: skip
    assert run_config_from_dschat(argv, cwd=app)[0]["data"]["cache_dir"] == "/tmp/x"
    config, notes = run_config_from_dschat(argv, cwd=app)
    assert "lora" not in config  # without --lora_dim the LoRA flags do nothing, as in DS-Chat
    for flag in ("--offload", "--lora_module_name model.layers.",
                 "--only_optimize_lora", "--lora_learning_rate 0.001", "--compute_fp32_loss",
                 "--local_rank 0"):  # fmt: skip
        assert any(note.startswith(f"{flag}: accepted, no effect") for note in notes), flag
    _, quiet = run_config_from_dschat(_base(app) + ["--output_dir", "out"], cwd=app)
    assert quiet == []


def test_sft_only_sources_are_never_split(app: Path) -> None:
    argv = _base(app) + ["--sft_only_data_path", "local/jsonfile"]
    config, _ = run_config_from_dschat(argv, cwd=app)
    sources, evals = config["data"]["sources"], config["data"]["eval_sources"]
    assert len(sources) == 2 and len(evals) == 2
    assert [s.get("split", True) for s in sources] == [True, False]
    assert [s.get("split", True) for s in evals] == [True, False]


def test_deepspeed_config_applies_on_top(app: Path) -> None:
    ds = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 4,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 2, "overlap_comm": True},
        "gradient_clipping": 0.5,
    }
    (app / "ds.json").write_text(json.dumps(ds))
    argv = _base(app) + ["--deepspeed", "--deepspeed_config", "ds.json"]
    config, notes = run_config_from_dschat(argv, cwd=app)
    cfg = RunConfig.model_validate(config)
    assert cfg.train.micro_batch_size == 2 and cfg.train.gradient_accumulation_steps == 4
    assert cfg.model.dtype == "bfloat16" and cfg.parallel.zero_stage == 2
    assert cfg.optim.grad_clip == 0.5 and cfg.optim.betas == (0.9, 0.95)
    assert any("zero_optimization.overlap_comm has no effect" in note for note in notes)


def test_deepspeed_config_errors_name_the_file(app: Path) -> None:
    (app / "ds.json").write_text(
        json.dumps({"optimizer": {"type": "AdamW", "params": {"betas": [0.9, 1.5]}}})
    )
    argv = _base(app) + ["--deepspeed_config", "ds.json"]
    with pytest.raises(UserError, match=rf"^{app / 'ds.json'}: optim\.betas\.1:"):
        run_config_from_dschat(argv, cwd=app)


def test_two_sparse_flags_turn_a_script_sparse(app: Path) -> None:
    argv = _base(app) + ["--sparse_method", "random", "--sparse_density", "0.05"]
    config, _ = run_config_from_dschat(argv, cwd=app)
    cfg = RunConfig.model_validate(config)
    assert cfg.sparse.method == "random" and cfg.sparse.density == 0.05
    argv = _base(app) + ["--sparse_method", "random", "--sparse_target", r".*q_proj\.kernel"]
    assert run_config_from_dschat(argv, cwd=app)[0]["sparse"]["target"] == [r".*q_proj\.kernel"]
    with pytest.raises(UserError, match=r"^--sparse_density 1.5: sparse.density"):
        run_config_from_dschat(
            _base(app) + ["--sparse_method", "random", "--sparse_density", "1.5"], cwd=app
        )


@pytest.mark.parametrize(
    ("extra", "dense"),
    [([], [".*"]), (["--only_optimize_lora"], [])],
)
def test_lora_flags_map_to_lora_settings(app: Path, extra: list[str], dense: list[str]) -> None:
    # DS-Chat converts every nn.Linear whose name contains --lora_module_name, at scale
    # lora_scaling / lora_dim = 1 / lora_dim, and freezes the converted weights; without
    # --only_optimize_lora everything else still trains. LoRA weights get their own lr.
    argv = _base(app) + [
        "--lora_dim", "8", "--lora_module_name", "model.layers.", "--lora_learning_rate", "2e-4",
    ]  # fmt: skip
    cfg = RunConfig.model_validate(run_config_from_dschat(argv + extra, cwd=app)[0])
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (8, 1.0, 0.0)
    assert cfg.lora.alpha / cfg.lora.rank == 1 / 8
    assert cfg.lora.target_modules == r".*model\.layers\..*"
    assert cfg.lora.learning_rate == 2e-4 and cfg.optim.learning_rate == 1e-3
    assert cfg.lora.dense_trainable == dense


def test_lora_module_name_is_a_substring_match(app: Path) -> None:
    # peft reads a string target_modules as a regex the whole module name must match.
    config, _ = run_config_from_dschat(_base(app) + ["--lora_dim", "4"], cwd=app)
    pattern = config["lora"]["target_modules"]  # from the default "decoder.layers."
    for name in ("model.decoder.layers.0.self_attn.q_proj", "model.decoder.layers.11.fc2"):
        assert re.fullmatch(pattern, name)
    for name in ("lm_head", "model.decoder.project_in", "model.decoder_layers.0.fc1"):
        assert not re.fullmatch(pattern, name)
