"""From rows to token ids and loss labels: one `Example` per row, unpadded.

Rendering, per format (`eot` is the text end `prepare_tokenizer` returns, the eos token):

    prompt_chosen      " " + prompt + " " + chosen + eot   (DeepSpeed-Chat, verbatim)
    prompt_completion  prompt + completion + eot
    messages           the chat template up to the last assistant turn, + eot unless the
                       template already ends with it
    text               text + eot

Texts are tokenized as DeepSpeed-Chat does: the tokenizer's default special tokens (e.g.
a leading bos) and truncation at `max_seq_len`, so a truncated text loses its eot.
Chat-template texts carry their own special tokens and are tokenized without adding more,
as `apply_chat_template(tokenize=True)` would.

Labels follow the HF convention (aligned with input_ids; the model shifts). Loss `all`
trains on every token, prompt included (DeepSpeed-Chat). Loss `completion` sets -100 on
the prompt: the leading tokens of the full text that lie wholly inside the prompt text
(prompt_chosen: " " + prompt; messages: the template up to the last assistant turn with
its generation prompt), found by character offsets. Counting the tokens of the prompt
tokenized alone would be wrong at the seam: a prompt ending in "assistant: " tokenizes
its space alone, but in the full text the space merges with the answer's first word
("Ġciao"), and a count would mask that first answer token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from interop.data.sources import Row
from interop.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

IGNORE = -100
SKIPPED = -1  # the prompt length of a row that makes no example


@dataclass(frozen=True, eq=False)
class Example:
    """One tokenized example: int32 ids and labels of equal length, -100 = not in the loss."""

    input_ids: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class _Text:
    full: str
    prompt: str
    add_special_tokens: bool
    where: str


def make_examples(
    rows: Sequence[Row],
    tok: PreTrainedTokenizerFast,
    eot: str,
    *,
    max_seq_len: int,
    loss_on: Literal["all", "completion"],
) -> list[Example]:
    """Tokenize and label `rows` in order; rows DeepSpeed-Chat would skip are dropped."""
    ids, prompt_lens = tokenize_rows(rows, tok, eot, max_seq_len=max_seq_len, loss_on=loss_on)
    examples = []
    for row_ids, prompt_len in zip(ids, prompt_lens, strict=True):
        if prompt_len == SKIPPED:
            continue
        input_ids = np.asarray(row_ids, dtype=np.int32)
        labels = input_ids.copy()
        labels[:prompt_len] = IGNORE
        examples.append(Example(input_ids, labels))
    return examples


def tokenize_rows(
    rows: Sequence[Row],
    tok: PreTrainedTokenizerFast,
    eot: str,
    *,
    max_seq_len: int,
    loss_on: Literal["all", "completion"],
) -> tuple[list[list[int]], list[int]]:
    """(token ids, prompt length) of every row, in order, by the tokenizer's batch
    encoding; a row DeepSpeed-Chat would skip gets no ids and prompt length `SKIPPED`."""
    texts = [_render(row, tok, eot) for row in rows]
    completion = loss_on == "completion"
    ids: list[list[int]] = [[] for _ in texts]
    prompt_lens = [SKIPPED if text is None else 0 for text in texts]
    for special in (True, False):
        picked = [i for i, t in enumerate(texts) if t and t.add_special_tokens == special]
        if not picked:
            continue
        encoded = tok(
            [texts[i].full for i in picked],
            add_special_tokens=special,
            truncation=True,
            max_length=max_seq_len,
            return_offsets_mapping=completion,
        )
        for n, i in enumerate(picked):
            ids[i] = encoded["input_ids"][n]
            if completion:
                prompt_lens[i] = _prompt_tokens(texts[i], encoded["offset_mapping"][n])
    return ids, prompt_lens


def _prompt_tokens(text: _Text, offsets: Sequence[tuple[int, int]]) -> int:
    """How many leading tokens of the full text lie wholly inside its prompt."""
    if not text.full.startswith(text.prompt):
        raise UserError(
            f"{text.where}: the chat template does not render the prompt as a prefix of the"
            " conversation, so loss_on completion cannot find it; use loss_on all"
        )
    count = 0
    for _, end in offsets:
        if end > len(text.prompt):
            break
        count += 1
    return count


def _render(row: Row, tok: PreTrainedTokenizerFast, eot: str) -> _Text | None:
    """The full text and the prompt-only text of a row; None for a row to skip."""
    d = row.data
    if row.format == "prompt_chosen":
        if d["prompt"] is None or d["chosen"] is None:
            return None
        full = " " + d["prompt"] + " " + d["chosen"] + eot
        return _Text(full, " " + d["prompt"], True, row.where)
    if row.format == "prompt_completion":
        return _Text(d["prompt"] + d["completion"] + eot, d["prompt"], True, row.where)
    if row.format == "text":
        return _Text(d["text"] + eot, "", True, row.where)
    return _render_messages(row, tok, eot)


def _render_messages(row: Row, tok: PreTrainedTokenizerFast, eot: str) -> _Text:
    messages = row.data["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    if tok.chat_template is None:
        raise UserError(f"{row.where}: 'messages' needs a tokenizer with a chat template")
    full = tok.apply_chat_template(messages[: last + 1], tokenize=False)
    prompt = tok.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
    if not full.rstrip().endswith(eot):
        full += eot
    return _Text(full, prompt, False, row.where)
