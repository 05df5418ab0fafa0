"""Reading sources: format detection, file:line errors, directories, weights."""

import json
import os

import numpy as np
import pytest

from interop.config import DataSource
from interop.data.sources import read_source, weighted
from interop.errors import UserError


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def in_tmp(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "prompt_chosen"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
        ({"text": "t", "id": 3}, "text"),
    ],
)
def test_format_is_detected_from_keys(tmp_path, row, fmt):
    write_jsonl(tmp_path / "d.jsonl", [row, row])
    rows = read_source(DataSource(path="d.jsonl"), tmp_path)
    assert [r.format for r in rows] == [fmt, fmt]
    assert [r.where for r in rows] == ["d.jsonl:1", "d.jsonl:2"]


def test_explicit_format_wins(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "c", "text": "t"}])
    rows = read_source(DataSource(path="d.jsonl", format="text"), tmp_path)
    assert rows[0].format == "text"


def test_json_list_and_json_lines_named_json(tmp_path):
    rows = [{"prompt": "a", "chosen": "b"}, {"prompt": "c", "chosen": "d"}]
    (tmp_path / "list.json").write_text(json.dumps(rows, indent=1))
    write_jsonl(tmp_path / "lines.json", rows)
    listed = read_source(DataSource(path="list.json"), tmp_path)
    lined = read_source(DataSource(path="lines.json"), tmp_path)
    assert [r.data for r in listed] == [r.data for r in lined] == rows
    assert listed[1].where == "list.json: row 2" and lined[1].where == "lines.json:2"


def test_malformed_jsonl_line_is_named(in_tmp):
    path = in_tmp / "data" / "train.jsonl"
    write_jsonl(path, [{"text": "ok"}] * 6)
    path.write_text(path.read_text() + '{"text": "x" "y"}\n')
    with pytest.raises(UserError, match=r"^data/train.jsonl:7: invalid JSON \(Expecting ',' "):
        read_source(DataSource(path="data/train.jsonl"))


def test_malformed_json_list_names_the_line(tmp_path):
    (tmp_path / "t.json").write_text('[\n{"text": "a"},\n{"text": }\n]')
    with pytest.raises(UserError, match=r"^t.json:3: invalid JSON"):
        read_source(DataSource(path="t.json"), tmp_path)


def test_row_missing_prompt_is_named(in_tmp):
    rows = [{"prompt": "a", "chosen": "b"}] * 2 + [{"chosen": "b"}]
    (in_tmp / "data").mkdir()
    (in_tmp / "data" / "train.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"^data/train.json: row 3: no 'prompt'$"):
        read_source(DataSource(path="data/train.json"))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": 1, "chosen": "b"}, "'prompt' must be a string, got int"),
        ({"messages": [{"role": "user", "content": "q"}]}, "'messages' has no assistant turn"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\] needs a string 'role' and 'content'"),
        ({"foo": "bar"}, r"cannot tell the data format from the keys \(foo\)"),
        (["not", "an", "object"], "cannot tell the data format"),
    ],
)
def test_bad_rows_are_named(tmp_path, row, message):
    write_jsonl(tmp_path / "d.jsonl", [row])
    with pytest.raises(UserError, match=f"^d.jsonl:1: {message}"):
        read_source(DataSource(path="d.jsonl"), tmp_path)


def test_null_prompt_is_kept_for_the_split(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": None, "chosen": "b"}])
    assert read_source(DataSource(path="d.jsonl"), tmp_path)[0].data["prompt"] is None


def test_directory_reads_its_train_files(tmp_path):
    write_jsonl(tmp_path / "set" / "train.jsonl", [{"text": "a"}])
    write_jsonl(tmp_path / "set" / "eval.jsonl", [{"text": "b"}])
    rows = read_source(DataSource(path="set"), tmp_path)
    assert [(r.data["text"], r.where) for r in rows] == [("a", "set/train.jsonl:1")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="^empty: a data directory needs one of train.json"):
        read_source(DataSource(path="empty"), tmp_path)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(UserError, match="^gone.jsonl: no such data file$"):
        read_source(DataSource(path="gone.jsonl"), tmp_path)
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="^d.csv: unknown data file type '.csv'"):
        read_source(DataSource(path="d.csv"), tmp_path)


def test_parquet_rows_are_read_and_a_corrupt_file_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["p1", "p2"], "chosen": ["c1", "c2"]})
    pq.write_table(table, tmp_path / "d.parquet")
    rows = read_source(DataSource(path="d.parquet"), tmp_path)
    assert [r.data["chosen"] for r in rows] == ["c1", "c2"]
    assert rows[0].format == "prompt_chosen" and rows[1].where == "d.parquet: row 2"
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="^bad.parquet: not a readable parquet file"):
        read_source(DataSource(path="bad.parquet"), tmp_path)


@pytest.mark.parametrize(("weight", "count"), [(1.0, 10), (2.0, 20), (0.5, 5), (1.3, 13)])
def test_weights_repeat_and_subsample(weight, count):
    rows = list(range(10))
    out = weighted(10, weight, np.random.default_rng([1, 0])).tolist()
    assert len(out) == count
    assert out[: 10 * int(weight)] == rows * int(weight)
    extra = out[10 * int(weight) :]
    assert len(set(extra)) == len(extra) and set(extra) <= set(rows)
    assert out == weighted(10, weight, np.random.default_rng([1, 0])).tolist()
