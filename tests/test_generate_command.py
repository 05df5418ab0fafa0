"""`jax-sft generate` and `compare-answers`: adapters served merged, both models side by
side, bad input refused in one line."""

import io
import json

import pytest
from train_fixtures import run_config

from jax_sft import cli
from jax_sft.train.run import train

PROMPTS = ["def add(a, b):", "The list of"]


def tokens(capsys, model, *extra) -> list[list[int]]:
    return json.loads(_generated(capsys, model, *extra))["token_ids"]


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


def test_compare_answers_writes_both_models_side_by_side(tiny_base, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cfg = run_config(tiny_base, tmp_path / "run", optim={"learning_rate": 0.05})
    train(cfg)
    out = tmp_path / "answers"
    argv = ["compare-answers", str(tiny_base), str(tmp_path / "run" / "hf")]
    argv += ["--prompts", str(prompts), "--out", str(out), "--max_new_tokens", "12", "--json"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["prompts"] == PROMPTS and report["base"] != report["tuned"]
    assert report["base"] == json.loads(_generated(capsys, tiny_base))["completions"]
    table = (out / "answers.md").read_text().splitlines()
    assert len(table) == 2 + len(PROMPTS) and table[2].startswith(f"| {PROMPTS[0]} |")
    assert (out / "answers.html").read_text().count("<tr>") == 1 + len(PROMPTS)
    assert cli.main(argv) == 2  # OUT exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def _generated(capsys, model, *extra) -> str:
    argv = ["generate", str(model), "--max_new_tokens", "12", "--json", *extra]
    for prompt in PROMPTS:
        argv += ["--prompt", prompt]
    assert cli.main(argv) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_stop_strings_cut_the_answer_and_its_tokens(tiny_base, capsys):
    full = json.loads(_generated(capsys, tiny_base))
    text, ids = full["completions"][0], full["token_ids"][0]
    stop = text[4:7]
    assert stop and stop in text
    cut = json.loads(_generated(capsys, tiny_base, "--stop", stop))
    assert cut["completions"][0] == text[: text.index(stop)]
    kept = cut["token_ids"][0]
    assert kept == ids[: len(kept)] and len(kept) < len(ids)


def test_chat_answers_each_turn_and_drops_what_outgrows_the_context(tiny_base, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("def add(a, b):\nThe list of\nquit\n"))
    assert cli.main(["chat", str(tiny_base), "--max_new_tokens", "400"]) == 0
    out, err = capsys.readouterr()
    argv = ["generate", str(tiny_base), "--max_new_tokens", "400", "--json"]
    argv += ["--stop", "\n\nHuman:", "--prompt", "\n\nHuman: def add(a, b):\n\nAssistant:"]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["completions"][0]
    assert len(first) > 200 and out.startswith(first.strip())
    # Turn 2 after turn 1's long answer needs more than the 512 positions: turn 1 goes.
    assert "oldest turn no longer fits" in err
    assert len(out) > len(first.strip()) + 1  # and turn 2 is answered
