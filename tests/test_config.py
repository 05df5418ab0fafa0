"""The run-config schema: defaults, YAML loading, `--set` overrides and one-line errors."""

from pathlib import Path

import pytest

from interop.config import RunConfig
from interop.config_files import apply_overrides, dump_config, load_config
from interop.errors import UserError


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    cfg = load_config(None)
    assert cfg == RunConfig()
    assert cfg.model.tiny == "tiny-llama" and cfg.model.path is None
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.schedule.type == "cosine"
    assert cfg.parallel.data == -1 and cfg.parallel.zero_stage == 0
    assert cfg.train.micro_batch_size == 4


def test_empty_file_and_null_sections_are_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")) == RunConfig()
    assert load_config(_write(tmp_path, "train:\n# max_steps: 3\n")) == RunConfig()


def test_yaml_values_reach_the_config(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "model:\n  path: /ckpt/opt-125m\n  dtype: bfloat16\n"
        "data:\n  sources:\n    - path: data/train.json\n      format: prompt_chosen\n"
        "  data_split: '2,4,4'\n"
        "optim:\n  betas: [0.8, 0.99]\n"
        "sparse:\n  method: spiel\n  density: 0.01\n"
        "parallel:\n  zero_stage: 3\n  fsdp: -1\n  data: 2\n"
        "logging:\n  json: true\n",
    )
    cfg = load_config(path)
    assert cfg.model.path == "/ckpt/opt-125m" and cfg.model.tiny is None
    assert cfg.model.dtype == "bfloat16"
    assert cfg.data.sources[0].path == "data/train.json"
    assert cfg.data.sources[0].format == "prompt_chosen"
    assert cfg.data.sources[0].weight == 1.0
    assert cfg.data.data_split == "2,4,4"
    assert cfg.optim.betas == (0.8, 0.99)
    assert cfg.sparse.method == "spiel" and cfg.sparse.density == 0.01
    assert (cfg.parallel.zero_stage, cfg.parallel.data, cfg.parallel.fsdp) == (3, 2, -1)
    assert cfg.logging.as_json is True


def test_overrides_parse_values_as_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  max_steps: 10\n")
    cfg = load_config(
        path,
        [
            "train.max_steps=3",
            "model.remat=true",
            "lora.target_modules=[q_proj, k_proj]",
            "train.output_dir=out/x",
            "optim.grad_clip=null",
        ],
    )
    assert cfg.train.max_steps == 3
    assert cfg.model.remat is True
    assert cfg.lora.target_modules == ["q_proj", "k_proj"]
    assert cfg.train.output_dir == "out/x"
    assert cfg.optim.grad_clip is None


def test_apply_overrides_creates_sections_and_copies() -> None:
    data = {"train": {"seed": 1}}
    result = apply_overrides(data, ["sparse.density=0.5", "train.seed=7", "train.seed=8"])
    assert result == {"train": {"seed": 8}, "sparse": {"density": 0.5}}
    assert data == {"train": {"seed": 1}}


def test_apply_overrides_rejects_descending_into_a_value() -> None:
    with pytest.raises(UserError, match=r"--set train\.seed\.x=1: train\.seed is 1, not a section"):
        apply_overrides({"train": {"seed": 1}}, ["train.seed.x=1"])


@pytest.mark.parametrize("item", ["train.seed", "=3", "a..b=1"])
def test_override_without_a_dotted_key_is_an_error(item: str) -> None:
    with pytest.raises(UserError, match="expected KEY=VALUE") as err:
        load_config(None, [item])
    assert f"--set {item}" in str(err.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  max_stepz: 3\n", name="x.yaml")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: unknown key 'train.max_stepz'"


def test_unknown_section_in_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "trian:\n  seed: 3\n")
    with pytest.raises(UserError, match=r"run\.yaml: unknown key 'trian'"):
        load_config(path)


def test_unknown_key_through_set_names_the_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  seed: 3\n")
    with pytest.raises(UserError) as err:
        load_config(path, ["train.max_stepz=5"])
    assert str(err.value) == "--set train.max_stepz=5: unknown key 'train.max_stepz'"


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  micro_batch_size: lots\n", name="x.yaml")
    with pytest.raises(UserError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: train.micro_batch_size: Input should be a valid integer")
    assert "\n" not in message


def test_wrong_type_through_set_names_the_override() -> None:
    with pytest.raises(UserError, match=r"^--set train\.epochs=0: train\.epochs: .*greater than 0"):
        load_config(None, ["train.epochs=0"])


def test_list_item_errors_use_dotted_index(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  sources:\n    - path: a.json\n      format: csv\n")
    with pytest.raises(UserError, match=r"run\.yaml: data\.sources\.0\.format: Input should be"):
        load_config(path)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  seed: 1\n  epochs: [1, 2\nmodel:\n  tiny: tiny-opt\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: line ")
    assert "invalid YAML" in message
    line = int(message.split("line ")[1].split(":")[0])
    assert line in (3, 4)


def test_yaml_syntax_error_exact_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  seed: 1\n  epochs: 2: 3\n")
    with pytest.raises(UserError, match=r"run\.yaml: line 3: invalid YAML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: no such file"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "- train\n- model\n")
    with pytest.raises(UserError, match=r"run\.yaml: the top level must be a mapping.*list"):
        load_config(path)


def test_model_path_and_tiny_are_exclusive(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  path: /ckpt\n  tiny: tiny-llama\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: model: ")
    assert "model.path" in message and "model.tiny" in message and "both are set" in message


def test_model_section_without_source_uses_default_tiny(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "model:\n  dtype: bfloat16\n"))
    assert (cfg.model.tiny, cfg.model.dtype) == ("tiny-llama", "bfloat16")
    assert load_config(None, ["model.path=/ckpt"]).model.tiny is None


def test_model_needs_path_or_tiny(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  tiny: null\n")
    with pytest.raises(UserError, match=r"run\.yaml: model: .*\(neither is set\)"):
        load_config(path)


def test_set_on_model_path_blames_file_and_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  tiny: tiny-opt\n")
    with pytest.raises(UserError) as err:
        load_config(path, ["model.path=/ckpt"])
    assert str(err.value).startswith(f"{path} with --set model.path=/ckpt: model: ")


def test_unknown_tiny_model_lists_known_names() -> None:
    with pytest.raises(UserError, match=r"model\.tiny: unknown tiny model 'tiny-bert'.*tiny-opt"):
        load_config(None, ["model.tiny=tiny-bert"])


@pytest.mark.parametrize("density", ["0", "1.5", "-0.1"])
def test_density_out_of_range(density: str) -> None:
    with pytest.raises(UserError, match=r"sparse\.density: Input should be"):
        load_config(None, [f"sparse.density={density}"])


def test_density_one_is_allowed() -> None:
    assert load_config(None, ["sparse.density=1"]).sparse.density == 1.0


def test_at_most_one_sparse_budget() -> None:
    with pytest.raises(UserError, match="set at most one of sparse.density, sparse.num_tunable"):
        load_config(None, ["sparse.density=0.1", "sparse.num_tunable=100"])


def test_invalid_sparse_regex() -> None:
    with pytest.raises(UserError, match=r"sparse\.target: invalid regex '\('"):
        load_config(None, ["sparse.target=['(']"])


def test_two_rest_mesh_axes(tmp_path: Path) -> None:
    path = _write(tmp_path, "parallel:\n  data: -1\n  tensor: -1\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: parallel: at most one mesh axis may be -1")
    assert "parallel.data" in message and "parallel.tensor" in message


def test_mesh_axis_size_zero() -> None:
    with pytest.raises(UserError, match=r"parallel\.fsdp must be >= 1 or -1"):
        load_config(None, ["parallel.fsdp=0"])


def test_zero_stage_out_of_range() -> None:
    with pytest.raises(UserError, match=r"parallel\.zero_stage: Input should be 0, 1, 2 or 3"):
        load_config(None, ["parallel.zero_stage=4"])


def test_data_split_needs_three_parts() -> None:
    with pytest.raises(UserError, match=r"data\.data_split: expected three non-negative numbers"):
        load_config(None, ["data.data_split=6,4"])


def test_dump_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "model.tiny=tiny-gpt2",
            "data.sources=[{path: a.jsonl, format: text, weight: 2}]",
            "optim.eps=1e-6",
            "optim.betas=[0.9, 0.999]",
            "sparse.method=fisher",
            "sparse.match_lora_rank=8",
            "parallel.tensor=2",
            "logging.json=true",
        ],
    )
    text = dump_config(cfg)
    assert "json: true" in text and "as_json" not in text
    again = load_config(_write(tmp_path, text))
    assert again == cfg
    assert dump_config(again) == text


def test_default_dump_round_trips(tmp_path: Path) -> None:
    path = _write(tmp_path, dump_config(RunConfig()))
    assert load_config(path) == RunConfig()
    assert load_config(path, ["model.tiny=null", "model.path=/ckpt"]).model.path == "/ckpt"
