"""`jax-sft config`: the run config as every command will see it, and its errors."""

import yaml

from interop.config_files import load_config
from jax_sft import cli


def test_resolved_config_is_printed_and_reloads_equal(tmp_path, capsys):
    src = tmp_path / "run.yaml"
    src.write_text("train:\n  max_steps: 7\n")
    assert cli.main(["config", str(src), "--set", "optim.learning_rate=3e-4"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "resolved.yaml").write_text(printed)
    resolved = load_config(tmp_path / "resolved.yaml")
    assert resolved.train.max_steps == 7
    assert resolved.optim.learning_rate == 3e-4
    assert yaml.safe_load(printed)["model"]["tiny"] == "tiny-llama"


def test_unknown_key_exits_2_naming_key_and_file(tmp_path, capsys):
    src = tmp_path / "run.yaml"
    src.write_text("train:\n  max_stepz: 7\n")
    assert cli.main(["config", str(src)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jax-sft: error: {src}: unknown key 'train.max_stepz'"]


def test_bad_flag_is_a_user_error(capsys):
    assert cli.main(["convert", "a", "b", "--to", "zip"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'zip'" in err and len(err.strip().splitlines()) == 1
