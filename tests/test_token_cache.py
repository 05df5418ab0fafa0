"""The tokenized-data cache: reused when nothing that decides the tokens changed, rebuilt
when anything did, never read half-written, shared by concurrent runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_data_tokenizer import fresh_tokenizer

from interop.config import DataConfig
from interop.data.batches import Batches
from interop.data.pipeline import build_datasets
from interop.data.token_cache import cached_table, tokenizer_fingerprint
from interop.data.tokenizer import prepare_tokenizer
from interop.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def opt_tok():
    return prepare_tokenizer(fresh_tokenizer(), "opt", eot_token=None, add_eot_token=False)


def write_rows(path: Path, n: int, tag: str = "q") -> Path:
    rows = [{"prompt": f"{tag} question {i}", "chosen": f"the answer is {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def table(path, tok, eot, cache, **kw):
    args = dict(fmt="auto", max_seq_len=64, loss_on="completion", cache_dir=cache)
    args.update(kw)
    fmt = args.pop("fmt")
    return cached_table(path, Path(path.name), fmt, tok, eot, progress=False, **args)


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir())


def test_the_cached_examples_are_the_in_memory_examples(tmp_path, opt_tok):
    tok, eot = opt_tok
    write_rows(tmp_path / "a.jsonl", 40)
    write_rows(tmp_path / "b.jsonl", 30, "b")
    cfg = DataConfig(
        sources=[{"path": "a.jsonl"}, {"path": "b.jsonl", "weight": 1.5}],
        loss_on="completion",
        max_seq_len=64,
        eval_fraction=0.1,
    )
    plain = build_datasets(cfg, tok, eot, base_dir=tmp_path)
    cached = build_datasets(cfg, tok, eot, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    again = build_datasets(cfg, tok, eot, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    for got in (cached, again):
        for ours, want in zip(got, plain, strict=True):
            assert len(ours) == len(want) > 0
            for a, b in zip(ours, want, strict=True):
                np.testing.assert_array_equal(a.input_ids, b.input_ids)
                np.testing.assert_array_equal(a.labels, b.labels)
    packed = [
        Batches(e, batch_size=4, seq_len=64, pad_id=0, packing=True, seed=3).batch(5)
        for e in (plain[0], again[0])
    ]
    for key in packed[0]:
        np.testing.assert_array_equal(packed[0][key], packed[1][key])
    assert isinstance(again[0].tables[0].ids, np.memmap)


def test_a_second_run_maps_the_entry_the_first_wrote(tmp_path, opt_tok):
    tok, eot = opt_tok
    data, cache = write_rows(tmp_path / "d.jsonl", 20), tmp_path / "cache"
    first = table(data, tok, eot, cache)
    (entry,) = entries(cache)
    written = (entry / "ids.bin").stat().st_mtime_ns
    second = table(data, tok, eot, cache)
    assert entries(cache) == [entry] and (entry / "ids.bin").stat().st_mtime_ns == written
    np.testing.assert_array_equal(first.ids, second.ids)
    assert json.loads((entry / "meta.json").read_text())["rows"] == 20 == second.rows


CHANGES = {
    "file": lambda p, tok, eot: (write_rows(p, 21), (tok, eot, {})),
    "format": lambda p, tok, eot: (p, (tok, eot, {"fmt": "prompt_chosen"})),
    "max_seq_len": lambda p, tok, eot: (p, (tok, eot, {"max_seq_len": 8})),
    "loss_on": lambda p, tok, eot: (p, (tok, eot, {"loss_on": "all"})),
    "eot": lambda p, tok, eot: (p, (tok, "</eot>", {})),
}


@pytest.mark.parametrize("change", [*CHANGES, "tokenizer", "chat_template", "truncation_side"])
def test_any_key_input_changed_builds_a_new_entry(tmp_path, opt_tok, change):
    tok, eot = opt_tok
    data, cache = write_rows(tmp_path / "d.jsonl", 20), tmp_path / "cache"
    short = {"max_seq_len": 8} if change == "truncation_side" else {}  # rows get truncated
    before = table(data, tok, eot, cache, **short)
    if change in CHANGES:
        time.sleep(0.01)  # a rewritten file gets a new modification time
        data, (tok, eot, kw) = CHANGES[change](data, tok, eot)
    else:
        tok, kw = fresh_tokenizer(), {}
        if change == "tokenizer":
            tok.add_special_tokens({"additional_special_tokens": ["question"]})
        elif change == "chat_template":
            tok.chat_template = "{{ messages }}"
        else:
            tok.truncation_side, kw = "left", short
        tok, eot = prepare_tokenizer(tok, "opt", eot_token=None, add_eot_token=False)
    after = table(data, tok, eot, cache, **kw)
    assert len(entries(cache)) == 2
    if change in ("file", "max_seq_len", "loss_on", "tokenizer", "truncation_side", "eot"):
        differs = after.rows != before.rows or not np.array_equal(
            np.asarray(after.ids), np.asarray(before.ids)
        )
        differs = differs or not np.array_equal(after.prompt_lens, before.prompt_lens)
        assert differs, change


def test_a_bad_row_fails_before_anything_is_cached(tmp_path, opt_tok):
    tok, eot = opt_tok
    data, cache = write_rows(tmp_path / "d.jsonl", 10_000), tmp_path / "cache"
    with data.open("a") as f:
        f.write('{"prompt": "p"}\n')
    with pytest.raises(UserError, match=r"^d.jsonl:10001: no 'chosen'"):
        table(data, tok, eot, cache)
    assert entries(cache) == []


BUILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_data_tokenizer import fresh_tokenizer
from interop.data.tokenizer import prepare_tokenizer
from interop.data.token_cache import cached_table, tokenizer_fingerprint
tok, eot = prepare_tokenizer(fresh_tokenizer(), "opt", eot_token=None, add_eot_token=False)
path = Path({path!r})
t = cached_table(path, Path(path.name), "auto", tok, eot, max_seq_len=64,
                 loss_on="completion", cache_dir=Path({cache!r}), progress=False)
print(t.rows, int(t.ids.sum()))
"""


def build_process(data: Path, cache: Path) -> subprocess.Popen:
    code = BUILD.format(tests=str(ROOT / "tests"), path=str(data), cache=str(cache))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


@pytest.mark.multiprocess
def test_a_build_killed_half_way_is_never_read_and_is_rebuilt(tmp_path, opt_tok):
    tok, eot = opt_tok
    data, cache = write_rows(tmp_path / "d.jsonl", 50_000), tmp_path / "cache"
    proc = build_process(data, cache)
    deadline = time.monotonic() + 120
    while not any((p / "ids.bin").exists() for p in cache.glob("*.tmp-*")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert entries(cache) and all(".tmp-" in p.name for p in entries(cache))
    rebuilt = table(data, tok, eot, cache)
    assert [p.name for p in entries(cache) if ".tmp-" in p.name] == []
    assert rebuilt.rows == 50_000 and rebuilt.starts[-1] == len(rebuilt.ids)


@pytest.mark.multiprocess
def test_concurrent_runs_tokenize_once_and_map_the_same_entry(tmp_path):
    data, cache = write_rows(tmp_path / "d.jsonl", 20_000), tmp_path / "cache"
    procs = [build_process(data, cache) for _ in range(2)]
    outs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] and outs[0].split()[0] == "20000"
    assert len(entries(cache)) == 1


def test_the_tokenizer_key_ignores_what_a_call_leaves_behind():
    tok, _ = prepare_tokenizer(fresh_tokenizer(), "opt", eot_token=None, add_eot_token=False)
    before = tokenizer_fingerprint(tok)
    tok(["a long enough text to truncate"], truncation=True, max_length=4, padding="max_length")
    assert tokenizer_fingerprint(tok) == before
    tok.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert tokenizer_fingerprint(tok) != before
