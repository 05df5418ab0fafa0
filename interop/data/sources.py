"""Reading dataset files into validated rows that remember where they came from.

A source is a `.json` file (a JSON list of objects, or JSON Lines as Hugging Face
`datasets` also accepts under that name), a `.jsonl` file, a `.parquet` file, or a
directory, whose `train.json`, `train.jsonl` and `train.parquet` are read.
The format is `DataSource.format`, or else told from the first row's keys:

    prompt + chosen      -> prompt_chosen      (DeepSpeed-Chat; `rejected` is ignored)
    prompt + completion  -> prompt_completion
    messages             -> messages           ([{role, content}, ...], chat template)
    text                 -> text

Every row is checked against its format while reading, and each row keeps its location
(`data/train.jsonl:7`, `data/train.json: row 3`), so a bad row is reported by file and
line. A `prompt_chosen` row whose prompt or chosen is null is kept here and dropped when
examples are made, because DeepSpeed-Chat splits before it drops such rows.

Weights blend sources: weight 1 takes every row once, 2 twice, 0.5 a seeded half;
in general floor(w) full copies plus a seeded round(frac(w) * n) subset.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interop.config import DataSource
from interop.errors import UserError

FORMAT_KEYS = {
    "prompt_chosen": ("prompt", "chosen"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "text": ("text",),
}
NULLABLE = {"prompt_chosen"}  # DeepSpeed-Chat skips rows with a null prompt or chosen
DIRECTORY_FILES = ("train.json", "train.jsonl", "train.parquet")
CHUNK_ROWS = 8192  # rows read, validated and tokenized at a time


@dataclass(frozen=True)
class Row:
    """One validated record: its fields, its format and where it was read."""

    data: dict[str, Any]
    format: str
    where: str


def read_source(source: DataSource, base_dir: Path = Path(".")) -> list[Row]:
    """The rows of one source (file or directory), validated; relative paths use base_dir."""
    files = source_files(source, base_dir)
    return [row for f in files for rows in file_rows(*f, source.format) for row in rows]


def file_rows(full: Path, shown: Path, fmt: str, chunk: int = CHUNK_ROWS) -> Iterator[list[Row]]:
    """The validated rows of one data file in lists of up to `chunk` (JSON Lines and
    parquet are read as the lists are consumed); format `auto` is told from the first row."""
    for records in _records(full, shown, chunk):
        fmt = fmt if fmt != "auto" else _detect(*records[0])
        yield [Row(_check(record, fmt, where), fmt, where) for where, record in records]


def source_files(source: DataSource, base_dir: Path = Path(".")) -> list[tuple[Path, Path]]:
    """(path to open, path to show) of each file a source reads, in reading order."""
    path = Path(source.path).expanduser()
    full = path if path.is_absolute() else base_dir / path
    if full.is_dir():
        files = [name for name in DIRECTORY_FILES if (full / name).is_file()]
        if not files:
            raise UserError(f"{path}: a data directory needs one of {', '.join(DIRECTORY_FILES)}")
        return [(full / name, path / name) for name in files]
    if not full.is_file():
        raise UserError(f"{path}: no such data file")
    return [(full, path)]


def records_rows(records: list, fmt: str = "auto", name: str = "training_data") -> list[Row]:
    """In-memory records (dicts in any supported format) as validated rows; a bad one is
    reported as `name[i]`."""
    if not isinstance(records, list) or not records:
        raise UserError(f"{name}: expected a non-empty list of example dicts or a data file")
    located = [(f"{name}[{i}]", record) for i, record in enumerate(records)]
    fmt = fmt if fmt != "auto" else _detect(*located[0])
    return [Row(_check(record, fmt, where), fmt, where) for where, record in located]


def weighted(n: int, weight: float, rng: np.random.Generator) -> np.ndarray:
    """Positions of n rows weighted: all of them floor(weight) times, then a seeded
    round(frac(weight) * n) subset in order."""
    whole = int(weight)
    extra = round((weight - whole) * n)
    picked = np.sort(rng.permutation(n)[:extra])
    return np.concatenate([np.tile(np.arange(n), whole), picked]).astype(np.int64)


def _records(full: Path, shown: Path, chunk: int) -> Iterator[list[tuple[str, Any]]]:
    suffix = full.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and not _json_array(full)):
        yield from _chunks(_json_lines(full, shown), chunk)
    elif suffix == ".json":
        yield from _chunks(iter(_json_file(full, shown)), chunk)
    elif suffix == ".parquet":
        yield from _parquet(full, shown, chunk)
    else:
        raise UserError(f"{shown}: unknown data file type '{suffix}' (use .json, .jsonl, .parquet)")


def _chunks(records: Iterator[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    while chunk := list(itertools.islice(records, size)):
        yield chunk


def utf8_text(raw: bytes, shown: str | Path, first_line: int = 1) -> str:
    """`raw` (the file `shown` from line `first_line` on) decoded as UTF-8; a bad byte
    is a UserError naming the file and its line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + first_line
        byte = raw[exc.start]
        raise UserError(f"{shown}:{line}: not UTF-8 text (byte 0x{byte:02x})") from None


def _json_lines(full: Path, shown: Path) -> Iterator[tuple[str, Any]]:
    with open(full, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{shown}:{number}"
            line = utf8_text(raw, shown, number)
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: invalid JSON ({exc.msg})") from None


def _json_array(full: Path) -> bool:
    """Whether a .json file holds one JSON list (else it is read as JSON Lines)."""
    with open(full, "rb") as f:
        while block := f.read(1 << 16):
            text = block.lstrip()
            if text:
                return text.startswith(b"[")
    return False


def _json_file(full: Path, shown: Path) -> list[tuple[str, Any]]:
    text = utf8_text(full.read_bytes(), shown)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{shown}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    return [(f"{shown}: row {i}", item) for i, item in enumerate(items, start=1)]


def _parquet(full: Path, shown: Path, chunk: int) -> Iterator[list[tuple[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        for batch in pq.ParquetFile(full).iter_batches(batch_size=chunk):
            items = batch.to_pylist()
            yield [(f"{shown}: row {number + i}", item) for i, item in enumerate(items, start=1)]
            number += len(items)
    except pa.ArrowException as exc:
        raise UserError(f"{shown}: not a readable parquet file ({exc})") from None


def _detect(where: str, record: Any) -> str:
    keys = set(record) if isinstance(record, dict) else set()
    for fmt, needed in FORMAT_KEYS.items():
        if keys.issuperset(needed):
            return fmt
    found = ", ".join(sorted(map(str, keys))) or "none"
    raise UserError(
        f"{where}: cannot tell the data format from the keys ({found}); expected prompt+chosen,"
        " prompt+completion, messages or text, or set the source's format"
    )


def _check(record: Any, fmt: str, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object, got {type(record).__name__}")
    for key in FORMAT_KEYS[fmt]:
        if key not in record:
            raise UserError(f"{where}: no '{key}'")
        value = record[key]
        if value is None and fmt in NULLABLE:
            continue
        if key == "messages":
            _check_messages(value, where)
        elif not isinstance(value, str):
            raise UserError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return record


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for i, message in enumerate(messages):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise UserError(f"{where}: messages[{i}] needs a string 'role' and 'content'")
    if not any(message["role"] == "assistant" for message in messages):
        raise UserError(f"{where}: 'messages' has no assistant turn to train on")
