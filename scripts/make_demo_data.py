"""Write the demo's prompt/chosen SFT set from Python's own `pydoc_data.topics`.

Each topic gives questions in DeepSpeed-Chat's "Human: ... Assistant:" style whose answer
is the topic's opening prose. Every tenth topic (in sorted order) is held out for eval.
Run from the repository root: python scripts/make_demo_data.py
"""

import json
import re
from pathlib import Path
from pydoc_data.topics import topics

OUT = Path("configs/data/demo_sft")
QUESTIONS = (
    "What is {title}?",
    "Explain {title} in Python.",
    "Can you describe {title}?",
)


def prose(text: str) -> tuple[str, str]:
    """(title, the first one or two prose paragraphs) of a topic text."""
    lines = text.strip().splitlines()
    title = lines[0].strip()
    paragraphs = [p.strip() for p in "\n".join(lines[2:]).split("\n\n")]
    body = [re.sub(r"\s+", " ", p) for p in paragraphs if p and not p.startswith((" ", "*"))]
    return title, " ".join(body[:2])[:600]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "eval": []}
    for i, name in enumerate(sorted(topics)):
        title, answer = prose(topics[name])
        if len(answer) < 40:
            continue
        split = "eval" if i % 10 == 0 else "train"
        for q in QUESTIONS:
            prompt = f"\n\nHuman: {q.format(title=title)}\n\nAssistant:"
            rows[split].append({"prompt": prompt, "chosen": " " + answer})
    for split, items in rows.items():
        with (OUT / f"{split}.jsonl").open("w") as f:
            for row in items:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
