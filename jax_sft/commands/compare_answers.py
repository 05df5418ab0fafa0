"""`jax-sft compare-answers BASE TUNED --prompts FILE`: the two models' answers side by side.

DeepSpeed-Chat's `prompt_eval.py` prints a base and a fine-tuned model's answers to the
same prompts; this writes them as `OUT/answers.md` and `OUT/answers.html` (a table: the
prompt, the base's answer, the tuned model's answer), prints them, and with `--json`
ends with `{"prompts", "base", "tuned"}`. Either model may be any format or an adapter
(`jax_sft.serve`); both answer greedily unless sampling flags say otherwise.
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path

from interop.arguments import add_json, add_sampling, sampling
from interop.outputs import output_dir
from interop.report import emit
from jax_sft.serve import Answerer, read_prompts


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare-answers", help="two models' answers to the same prompts")
    p.add_argument("base", help="the model before fine-tuning (any format, or an adapter)")
    p.add_argument("tuned", help="the model after fine-tuning")
    p.add_argument("--prompts", required=True, help="a file of prompts")
    p.add_argument("--out", required=True, help="directory for answers.md and answers.html")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_sampling(p)
    add_json(p)
    p.set_defaults(run=run)


def markdown(base: str, tuned: str, rows: list[tuple[str, str, str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>") or " "

    lines = [f"| prompt | base: `{base}` | tuned: `{tuned}` |", "| --- | --- | --- |"]
    lines += [f"| {cell(p)} | {cell(b)} | {cell(t)} |" for p, b, t in rows]
    return "\n".join(lines) + "\n"


def page(base: str, tuned: str, rows: list[tuple[str, str, str]]) -> str:
    def cell(text: str) -> str:
        return f"<td><pre>{html.escape(text)}</pre></td>"

    body = "".join(f"<tr>{cell(p)}{cell(b)}{cell(t)}</tr>" for p, b, t in rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("prompt", base, tuned))
    return (
        "<!doctype html><meta charset='utf-8'><title>answers</title>"
        "<style>td,th{vertical-align:top;border:1px solid #ccc;padding:4px}"
        "pre{white-space:pre-wrap;margin:0}</style>"
        f"<table><tr>{head}</tr>{body}</table>\n"
    )


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(Path(args.prompts))
    answers = {}
    for side in ("base", "tuned"):
        model = Answerer.load(Path(getattr(args, side)))
        answers[side], _ = model.answer(prompts, args.max_new_tokens, **sampling(args))
    rows = list(zip(prompts, answers["base"], answers["tuned"], strict=True))
    out = Path(args.out)
    with output_dir(out, args.overwrite) as tmp:
        (tmp / "answers.md").write_text(markdown(args.base, args.tuned, rows))
        (tmp / "answers.html").write_text(page(args.base, args.tuned, rows))
    lines = []
    for prompt, base, tuned in rows:
        lines += [f"prompt: {prompt}", f"  base:  {base!r}", f"  tuned: {tuned!r}"]
    lines.append(f"wrote {out / 'answers.md'} and {out / 'answers.html'}")
    emit(lines, {"prompts": prompts, **answers}, args.json)
    return 0
