"""Tokenizers: load a local one, apply DeepSpeed-Chat's padding rules, or train a tiny one.

DeepSpeed-Chat step 1 (`dschat/utils/utils.py: get_tokenizer, load_hf_tokenizer`) sets the
pad token to the eos token for every model family except Llama, which instead gets a new
`[PAD]` token when it has none (so its vocabulary grows by one). With pad == eos, padding
is still told apart from the text's final eos by the attention mask, not by the token id,
so the eos a row ends with stays in the loss. `--add_eot_token` adds the end-of-turn token
(`--eot_token`, default `<|endoftext|>`) as an additional special token; step 1's text
still ends with `tokenizer.eos_token` (`main.py` passes `end_of_conversation_token=
tokenizer.eos_token`), so the added token only reserves an id. We do the same.

`train_tokenizer` builds the byte-level BPE that tiny demo models use, from text that
ships with CPython (`pydoc_texts`), so nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from interop.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

DSCHAT_EOT = "<|endoftext|>"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3
# The generic `tokenizers` backend's names, and the model families whose declaration of it
# `AutoTokenizer` honours (tests/test_data_tokenizer.py checks both against it).
GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
GENERIC_FAMILIES = ("llama", "opt", "gpt2")
TOKENIZER_FILES = ("tokenizer_config.json", "config.json")
# `role: content` lines after a bos; a generation prompt opens the assistant's line.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer saved in the local directory `path` (never downloaded).

    A directory that declares the generic `tokenizers` backend (as every tokenizer
    `train_tokenizer` writes does) is loaded by that class directly: `AutoTokenizer`
    would resolve it to the same class, but only after importing `transformers`' model
    configuration code, which loads torch where it is installed (seconds per process,
    and a JAX run would carry torch). Any other directory goes through `AutoTokenizer`.
    """
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such tokenizer directory")
    try:
        if _declares_generic_backend(path):
            return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot load a tokenizer ({reason})") from None


def _declares_generic_backend(path: Path) -> bool:
    """Whether `AutoTokenizer` would load `path` as the generic backend class: declared
    so, with no custom code, for no model or one of the families that keep it."""
    declared, config = (_json_object(path / name) for name in TOKENIZER_FILES)
    return (
        declared.get("tokenizer_class") in GENERIC_CLASSES
        and "auto_map" not in declared
        and config.get("model_type") in (None, *GENERIC_FAMILIES)
    )


def _json_object(file: Path) -> dict:
    try:
        found = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def prepare_tokenizer(
    tok: PreTrainedTokenizerFast, model_type: str, *, eot_token: str | None, add_eot_token: bool
) -> tuple[PreTrainedTokenizerFast, str]:
    """Apply DeepSpeed-Chat's pad/eot rules to `tok` (in place); return it and the text end.

    The text end is what every example's text is followed by: the eos token, as in
    DeepSpeed-Chat step 1. `eot_token` (default `<|endoftext|>`) is the token that
    `add_eot_token` adds as a special token.
    """
    if tok.eos_token is None:
        raise UserError(f"{tok.name_or_path}: the tokenizer has no eos token to end texts with")
    if model_type == "llama":
        if tok.pad_token is None:
            tok.add_special_tokens({"pad_token": "[PAD]"})
    else:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if add_eot_token:
        tok.add_special_tokens({"additional_special_tokens": [eot_token or DSCHAT_EOT]})
    return tok, tok.eos_token


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path) -> None:
    """Train a byte-level BPE on `texts` and save it as an HF tokenizer directory.

    Special tokens `<pad>` 0, `<s>` 1, `</s>` 2, `<unk>` 3; encoding prepends `<s>`;
    a `role: content` chat template makes the `messages` data format usable.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    pad, bos, eos, unk = SPECIAL_TOKENS
    core = Tokenizer(models.BPE(unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        chat_template=CHAT_TEMPLATE,
    )
    tok.save_pretrained(str(out_dir))


def pydoc_texts() -> list[str]:
    """The topic texts of CPython's own `pydoc_data.topics`, in sorted topic order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]
