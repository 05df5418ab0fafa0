"""Each data file tokenized once, into memory-mapped arrays that later runs map.

An entry is a directory `<cache_dir>/<file name>-<key>/` with the three arrays of a
`TokenTable` as raw little-endian files and `meta.json` (what the key was made of, the
row and token counts). The key hashes everything that decides the tokens: the file (its
resolved path, size and modification time), the data format, the tokenizer (its whole
serialized form, special tokens, chat template, truncation side), the end-of-text
string, `max_seq_len` and `loss_on`. Splits, seeds and weights are not in it: they pick
rows after tokenization, so one entry serves every split of a file.

Writing is safe against kills and concurrent runs:
- an entry is built in `<entry>.tmp-<pid>/` and renamed into place only when every file
  is written and flushed; a directory with the entry's name is therefore complete, and a
  build killed half-way leaves a `.tmp-` directory that is never read (the next builder
  removes it);
- builders of one key take an exclusive lock on `<entry>.lock` first: one process
  tokenizes, the others wait, then map what it wrote.
A bad row stops the build before the rename (reported by file and line), so nothing
of a failed build is ever used.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from interop.data.examples import tokenize_rows
from interop.data.sources import file_rows
from interop.data.token_table import TokenTable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

VERSION = 1  # bump when the entry layout or the tokenization rules change
TRANSIENT = ("truncation", "padding")  # a fast tokenizer's last call, not its rules
ARRAYS = {"ids": np.int32, "starts": np.int64, "prompt_lens": np.int32}


def cached_table(
    full: Path,
    shown: Path,
    fmt: str,
    tok: PreTrainedTokenizerFast,
    eot: str,
    *,
    max_seq_len: int,
    loss_on: Literal["all", "completion"],
    cache_dir: Path,
    progress: bool = True,
) -> TokenTable:
    """The tokenized rows of the data file `full` (shown to the user as `shown`), from the
    cache, tokenizing it first when no complete entry has its key."""
    key = {
        "version": VERSION,
        "file": str(full.resolve()),
        "size": full.stat().st_size,
        "mtime_ns": full.stat().st_mtime_ns,
        "format": fmt,
        "tokenizer": tokenizer_fingerprint(tok),
        "truncation_side": tok.truncation_side,
        "eot": eot,
        "max_seq_len": max_seq_len,
        "loss_on": loss_on,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    entry = cache_dir / f"{full.name}-{digest}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(entry.with_name(entry.name + ".lock")):
        if not entry.is_dir():
            for stale in cache_dir.glob(f"{entry.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            rows = file_rows(full, shown, fmt)
            make = dict(max_seq_len=max_seq_len, loss_on=loss_on)
            _build(entry, key, (tokenize_rows(r, tok, eot, **make) for r in rows), shown, progress)
    return _map(entry)


def tokenizer_fingerprint(tok: PreTrainedTokenizerFast) -> str:
    """A hash of all that decides a tokenizer's output: its serialized pipeline (vocabulary,
    merges, normalizer, pre-tokenizer, post-processor; a tokenizer without one, its
    vocabulary), special tokens and chat template."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        # truncation and padding are per-call settings the tokenizer keeps after a call
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in TRANSIENT}
        pipeline = json.dumps(state, sort_keys=True)
    else:
        pipeline = json.dumps(sorted(tok.get_vocab().items()))
    h = hashlib.sha256(f"{type(tok).__name__}\n{pipeline}".encode())
    h.update(json.dumps([tok.all_special_tokens, tok.chat_template], default=str).encode())
    return h.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(
    entry: Path,
    key: dict,
    chunks: Iterator[tuple[list[list[int]], list[int]]],
    shown: Path,
    progress: bool,
) -> None:
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        _write(tmp, key, chunks, shown, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, entry)


def _write(
    tmp: Path,
    key: dict,
    chunks: Iterator[tuple[list[list[int]], list[int]]],
    shown: Path,
    progress: bool,
) -> None:
    files = {name: open(tmp / f"{name}.bin", "wb") for name in ARRAYS}
    rows = tokens = 0
    started = last = time.monotonic()
    files["starts"].write(np.zeros(1, np.int64).tobytes())
    try:
        for ids, prompt_lens in chunks:
            lengths = np.fromiter((len(r) for r in ids), np.int64, len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths.sum()))
            files["ids"].write(flat.tobytes())
            files["starts"].write((tokens + np.cumsum(lengths)).tobytes())
            files["prompt_lens"].write(np.asarray(prompt_lens, np.int32).tobytes())
            rows, tokens = rows + len(ids), tokens + len(flat)
            if progress and time.monotonic() - last > 1.0:
                last = time.monotonic()
                rate = rows / (last - started)
                sys.stderr.write(f"\rtokenizing {shown}: {rows:,} rows, {rate:,.0f} rows/s ")
                sys.stderr.flush()
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in files.values():
            f.close()
    if progress and last > started:
        elapsed = time.monotonic() - started
        sys.stderr.write(f"\rtokenized {shown}: {rows:,} rows, {rows / elapsed:,.0f} rows/s\n")
    meta = {"key": key, "rows": rows, "tokens": tokens}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def _map(entry: Path) -> TokenTable:
    meta = json.loads((entry / "meta.json").read_text())
    sizes = {"ids": meta["tokens"], "starts": meta["rows"] + 1, "prompt_lens": meta["rows"]}
    arrays = {
        name: np.memmap(entry / f"{name}.bin", dtype, mode="r", shape=(sizes[name],))
        if sizes[name]
        else np.zeros(0, dtype)
        for name, dtype in ARRAYS.items()
    }
    return TokenTable(**arrays)
