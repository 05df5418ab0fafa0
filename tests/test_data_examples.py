"""Rendering, tokenization and label masking, checked against DeepSpeed-Chat's own recipe."""

import numpy as np
import pytest
from test_data_tokenizer import fresh_tokenizer

from interop.data.batches import Batches
from interop.data.examples import IGNORE, make_examples
from interop.data.sources import Row
from interop.data.tokenizer import prepare_tokenizer


@pytest.fixture(scope="module")
def opt_tok():
    tok, eos = prepare_tokenizer(fresh_tokenizer(), "opt", eot_token=None, add_eot_token=False)
    return tok, eos


PAIRS = [
    ("\n\nHuman: What is a list?\n\nAssistant:", "A mutable sequence."),
    ("Human: while?", "A loop that runs while its condition holds true, again and again."),
    ("x", ""),
]


def rows(fmt, items):
    return [Row(item, fmt, f"t.jsonl:{i}") for i, item in enumerate(items, start=1)]


@pytest.mark.parametrize("max_len", [8, 16, 64])
def test_prompt_chosen_matches_dschat_padded_tokenization(opt_tok, max_len):
    """Our unpacked batch equals DeepSpeed-Chat's `tokenizer(..., padding="max_length")`."""
    tok, eos = opt_tok
    items = [{"prompt": p, "chosen": c} for p, c in PAIRS]
    examples = make_examples(
        rows("prompt_chosen", items), tok, eos, max_seq_len=max_len, loss_on="all"
    )
    batches = Batches(
        examples,
        batch_size=len(PAIRS),
        seq_len=max_len,
        pad_id=tok.pad_token_id,
        packing=False,
        seed=0,
        shuffle=False,
    )
    batch = batches.batch(0)
    for r, (p, c) in enumerate(PAIRS):
        ref = tok(
            " " + p + " " + c + tok.eos_token,
            max_length=max_len,
            padding="max_length",
            truncation=True,
            return_tensors="np",
        )
        ids, mask = ref["input_ids"][0], ref["attention_mask"][0]
        np.testing.assert_array_equal(batch["input_ids"][r], ids)
        np.testing.assert_array_equal(batch["attention_mask"][r], mask)
        np.testing.assert_array_equal(batch["labels"][r], np.where(mask == 1, ids, IGNORE))


def test_truncation_drops_the_eos(opt_tok):
    tok, eos = opt_tok
    long, short = rows(
        "prompt_chosen", [{"prompt": "p " * 40, "chosen": "c"}, {"prompt": "p", "chosen": "c"}]
    )
    a, b = make_examples([long, short], tok, eos, max_seq_len=12, loss_on="all")
    assert len(a.input_ids) == 12 and tok.eos_token_id not in a.input_ids
    assert b.input_ids[-1] == tok.eos_token_id and len(b.input_ids) < 12
    assert a.input_ids.dtype == a.labels.dtype == np.int32


def test_completion_loss_masks_the_prompt(opt_tok):
    tok, eos = opt_tok
    item = {"prompt": "Question: what is a tuple?", "completion": " An immutable sequence."}
    (all_,) = make_examples(
        rows("prompt_completion", [item]), tok, eos, max_seq_len=64, loss_on="all"
    )
    (comp,) = make_examples(
        rows("prompt_completion", [item]), tok, eos, max_seq_len=64, loss_on="completion"
    )
    k = len(tok(item["prompt"])["input_ids"])
    np.testing.assert_array_equal(all_.input_ids, comp.input_ids)
    np.testing.assert_array_equal(all_.labels, all_.input_ids)
    assert (comp.labels[:k] == IGNORE).all()
    np.testing.assert_array_equal(comp.labels[k:], comp.input_ids[k:])
    assert tok.decode(comp.input_ids[k:]) == " An immutable sequence.</s>"


def test_prompt_chosen_completion_mask_uses_the_spaced_prompt(opt_tok):
    tok, eos = opt_tok
    item = {"prompt": "Human: hi Assistant:", "chosen": "hello"}
    (ex,) = make_examples(
        rows("prompt_chosen", [item]), tok, eos, max_seq_len=64, loss_on="completion"
    )
    k = len(tok(" Human: hi Assistant:")["input_ids"])
    assert (ex.labels[:k] == IGNORE).all() and (ex.labels[k:] != IGNORE).all()


def test_messages_use_the_chat_template(opt_tok):
    tok, eos = opt_tok
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    (ex,) = make_examples(
        rows("messages", [{"messages": chat}]), tok, eos, max_seq_len=64, loss_on="completion"
    )
    text = "<s>user: hi\nassistant: hello\nuser: bye\nassistant: ciao\n</s>"
    assert tok.decode(ex.input_ids) == text
    assert ex.input_ids.tolist().count(tok.bos_token_id) == 1
    assert tok.decode(ex.input_ids[ex.labels != IGNORE]) == " ciao\n</s>"


def test_text_format_and_null_rows(opt_tok):
    tok, eos = opt_tok
    (ex,) = make_examples(
        rows("text", [{"text": "plain words"}]), tok, eos, max_seq_len=64, loss_on="completion"
    )
    assert tok.decode(ex.input_ids) == "<s>plain words</s>"
    assert ex.labels[0] == IGNORE and (ex.labels[1:] == ex.input_ids[1:]).all()
    items = [{"prompt": None, "chosen": "c"}, {"prompt": "p", "chosen": "c"}]
    kept = make_examples(rows("prompt_chosen", items), tok, eos, max_seq_len=64, loss_on="all")
    assert len(kept) == 1 and tok.decode(kept[0].input_ids) == "<s> p c</s>"
