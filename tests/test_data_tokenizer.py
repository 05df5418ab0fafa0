"""The tokenizer helpers: a pydoc-trained BPE, DeepSpeed-Chat's pad/eot rules, local loading.

`fresh_tokenizer()` is shared with the other data tests: one training per process, and a
deep copy per test, since `prepare_tokenizer` changes a tokenizer in place.
"""

import copy
import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from interop.data.tokenizer import load_tokenizer, prepare_tokenizer, pydoc_texts, train_tokenizer
from interop.errors import UserError

VOCAB = 400


@functools.cache
def _trained():
    with tempfile.TemporaryDirectory() as d:
        train_tokenizer(pydoc_texts(), VOCAB, Path(d))
        return load_tokenizer(d)


def fresh_tokenizer():
    """A private copy of the pydoc-trained tokenizer."""
    return copy.deepcopy(_trained())


def test_trained_tokenizer_specials_and_bos():
    tok = fresh_tokenizer()
    assert len(tok) == VOCAB
    ids = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id]
    assert ids == [0, 1, 2, 3]
    encoded = tok("def f(): pass")["input_ids"]
    assert encoded[0] == 1 and 1 not in encoded[1:]
    assert tok.decode(encoded, skip_special_tokens=True) == "def f(): pass"


def test_chat_template_renders_roles():
    tok = fresh_tokenizer()
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tok.apply_chat_template(chat, tokenize=False) == "<s>user: hi\nassistant: yo\n"
    prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s>user: hi\nassistant: "


def test_pydoc_texts_are_cpython_topics():
    texts = pydoc_texts()
    assert len(texts) > 50 and any("while" in t for t in texts)


def test_non_llama_pads_with_eos():
    tok, end = prepare_tokenizer(fresh_tokenizer(), "opt", eot_token=None, add_eot_token=False)
    assert tok.pad_token == tok.eos_token == end == "</s>"
    assert len(tok) == VOCAB and tok.padding_side == "right"


def test_llama_keeps_its_pad_or_gets_pad_token():
    tok = fresh_tokenizer()
    tok.pad_token = None
    tok, end = prepare_tokenizer(tok, "llama", eot_token=None, add_eot_token=False)
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == VOCAB and end == "</s>"
    tok, _ = prepare_tokenizer(fresh_tokenizer(), "llama", eot_token=None, add_eot_token=False)
    assert tok.pad_token == "<pad>" and len(tok) == VOCAB


def test_add_eot_token_adds_one_special_token_but_text_ends_with_eos():
    tok, end = prepare_tokenizer(
        fresh_tokenizer(), "gpt2", eot_token="<|endoftext|>", add_eot_token=True
    )
    assert len(tok) == VOCAB + 1 and end == "</s>"
    assert tok("a<|endoftext|>")["input_ids"][-1] == VOCAB


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match=f"^{tmp_path / 'nope'}: no such tokenizer directory$"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(UserError, match=f"^{tmp_path}: cannot load a tokenizer"):
        load_tokenizer(tmp_path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The pydoc-trained tokenizer saved as `train_tokenizer` writes it."""
    path = tmp_path_factory.mktemp("tokenizer")
    _trained().save_pretrained(path)
    return path


@pytest.mark.parametrize("model_type", ["llama", "opt", "gpt2", "qwen2", None])
def test_the_generic_backend_loads_as_auto_tokenizer_loads_it(saved, tmp_path, model_type):
    """Qwen2 is a family whose own class `AutoTokenizer` prefers: it takes that path."""
    from transformers import AutoTokenizer

    for file in saved.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    if model_type is not None:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    ours, auto = load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert type(ours) is type(auto)
    assert (type(ours).__name__ == "TokenizersBackend") == (model_type != "qwen2")
    text = "def f(x):\n    return x  # </s> <pad>"
    assert ours(text)["input_ids"] == auto(text)["input_ids"]
    assert ours.all_special_tokens == auto.all_special_tokens and len(ours) == len(auto)
    chat = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(chat) == auto.apply_chat_template(chat)


def test_any_other_declared_class_goes_through_auto_tokenizer(saved, tmp_path):
    for file in saved.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    declared = json.loads((tmp_path / "tokenizer_config.json").read_text())
    declared["tokenizer_class"] = "GPT2Tokenizer"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(declared))
    assert type(load_tokenizer(tmp_path)).__name__ == "GPT2Tokenizer"


def test_loading_the_generic_backend_never_imports_torch(saved):
    code = (
        "import sys\nfrom interop.data.tokenizer import load_tokenizer\n"
        f"assert len(load_tokenizer({str(saved)!r})) == {VOCAB}\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
