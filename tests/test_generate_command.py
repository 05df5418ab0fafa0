"""`jax-sft generate`: adapters served merged, and bad input refused in one line."""

import json

import pytest
from train_fixtures import run_config

from jax_sft import cli
from jax_sft.train.run import train

PROMPTS = ["def add(a, b):", "The list of"]


def tokens(capsys, model, *extra) -> list[list[int]]:
    argv = ["generate", str(model), "--max_new_tokens", "12", "--json", *extra]
    for prompt in PROMPTS:
        argv += ["--prompt", prompt]
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["token_ids"]


@pytest.mark.parametrize(
    "mode",
    [{"sparse": {"method": "random", "density": 0.2}}, {"lora": {"rank": 4, "alpha": 16}}],
    ids=["sparse", "lora"],
)
def test_an_adapter_generates_as_its_merged_export(tiny_base, tmp_path, capsys, mode):
    cfg = run_config(
        tiny_base,
        tmp_path / "run",
        optim={"learning_rate": 0.05},
        train={"max_steps": 3},
        **mode,
    )
    train(cfg)
    adapter, merged = tmp_path / "run" / "adapter", tmp_path / "run" / "hf"
    from_adapter = tokens(capsys, adapter)
    assert from_adapter == tokens(capsys, merged)
    assert from_adapter == tokens(capsys, tiny_base, "--adapter", str(adapter))
    assert from_adapter != tokens(capsys, tiny_base)  # the adapter changes the answers


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--prompts", "EMPTY"], "no prompts in the file"),
        (["--prompt", "x", "--max_new_tokens", "600"], "the model's context is 512"),
        (["--prompt", "x", "--top_q", "0.5"], "unrecognized arguments: --top_q"),
        (["--prompt", "x", "--top_p", "1.5"], "top_p must be in (0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_base, tmp_path, capsys, extra, fragment):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    argv = ["generate", str(tiny_base), *[str(empty) if a == "EMPTY" else a for a in extra]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
