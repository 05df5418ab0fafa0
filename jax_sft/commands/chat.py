"""`jax-sft chat MODEL`: an interactive conversation, as DeepSpeed-Chat's `chat.py`.

Each line typed is a turn. The conversation so far is the prompt, in the format the
DeepSpeed-Chat SFT data uses (`"\\n\\nHuman: " + message + "\\n\\nAssistant:"` after the
previous turns), and an answer ends at the next `"\\n\\nHuman:"` (or eos, or
`--max_new_tokens`). `clear` starts over, `quit` (or end of input) ends. When the
conversation outgrows the model's context, its oldest turns are dropped and that is said.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from interop.arguments import add_sampling, sampling
from interop.errors import UserError
from jax_sft.serve import Answerer

HUMAN, ASSISTANT = "\n\nHuman: ", "\n\nAssistant:"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="talk with a model, one line per turn")
    p.add_argument("model", help="HF, Orbax or DeepSpeed directory, or an adapter")
    p.add_argument("--adapter", help="a sparse or LoRA adapter merged into MODEL at load")
    add_sampling(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    answerer = Answerer.load(Path(args.model), args.adapter and Path(args.adapter))
    settings = sampling(args)
    settings["stop"] = [*settings["stop"], HUMAN.rstrip()]
    turns: list[str] = []
    print("chat: a line per turn; 'clear' starts over, 'quit' ends", file=sys.stderr)
    for line in sys.stdin:
        message = line.strip()
        if message == "quit":
            break
        if message == "clear" or not message:
            turns = [] if message == "clear" else turns
            continue
        turns.append(f"{HUMAN}{message}{ASSISTANT}")
        while True:
            try:
                (text,), _ = answerer.answer(["".join(turns)], args.max_new_tokens, **settings)
                break
            except UserError as err:
                if len(turns) == 1 or "context" not in str(err):
                    raise
                turns.pop(0)
                print("chat: the oldest turn no longer fits the context; dropped", file=sys.stderr)
        print(text.strip(), flush=True)
        turns[-1] += text
    return 0
