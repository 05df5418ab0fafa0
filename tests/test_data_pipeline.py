"""build_datasets: sources -> split -> examples, eval sets, empty-set errors, layering."""

import json
import subprocess
import sys

import pytest
from test_data_tokenizer import fresh_tokenizer

from interop.config import DataConfig
from interop.data.pipeline import build_datasets
from interop.data.split import phase_indices
from interop.data.tokenizer import prepare_tokenizer
from interop.errors import UserError


@pytest.fixture(scope="module")
def opt_tok():
    return prepare_tokenizer(fresh_tokenizer(), "opt", eot_token=None, add_eot_token=False)


def write_pairs(path, n, tag):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"{tag} question {i}", "chosen": f"answer {i}"} for i in range(n)]
    path.write_text(json.dumps(rows))


def build(cfg, tok, eos, base):
    return build_datasets(cfg, tok, eos, base_dir=base)


def decoded(tok, examples):
    return [tok.decode(e.input_ids, skip_special_tokens=True) for e in examples]


def test_phase_split_applies_to_train_and_eval_separately(tmp_path, opt_tok):
    tok, eos = opt_tok
    write_pairs(tmp_path / "data" / "train.json", 20, "t")
    write_pairs(tmp_path / "data" / "eval.json", 10, "e")
    cfg = DataConfig(
        sources=[{"path": "data/train.json"}],
        eval_sources=[{"path": "data/eval.json"}],
        data_split="2,4,4",
        phase=1,
        seed=1234,
        max_seq_len=64,
    )
    train, evals = build(cfg, tok, eos, tmp_path)
    want_train = [f" t question {i} answer {i}" for i in phase_indices(20, "2,4,4", 1, 1234)]
    want_eval = [f" e question {i} answer {i}" for i in phase_indices(10, "2,4,4", 1, 1234)]
    assert decoded(tok, train) == want_train and len(train) == 4
    assert decoded(tok, evals) == want_eval and len(evals) == 2


def test_unsplit_sources_keep_every_row(tmp_path, opt_tok):
    tok, eos = opt_tok
    write_pairs(tmp_path / "a.json", 20, "a")
    write_pairs(tmp_path / "b.json", 5, "b")
    cfg = DataConfig(
        sources=[{"path": "a.json"}, {"path": "b.json", "split": False}],
        data_split="2,4,4",
        max_seq_len=64,
    )
    train, _ = build(cfg, tok, eos, tmp_path)
    texts = decoded(tok, train)
    assert len(train) == 4 + 5
    assert sorted(t for t in texts if t.startswith(" b")) == sorted(
        f" b question {i} answer {i}" for i in range(5)
    )


def test_empty_after_split_names_sources_and_reason(tmp_path, opt_tok):
    write_pairs(tmp_path / "data" / "train.json", 2, "t")
    cfg = DataConfig(sources=[{"path": "data/train.json"}], data_split="1,1,1", phase=1)
    message = r"^data.sources \(data/train.json\): no examples left after data_split 1,1,1 phase 1$"
    with pytest.raises(UserError, match=message):
        build(cfg, *opt_tok, tmp_path)


def test_no_sources_and_no_rows(tmp_path, opt_tok):
    with pytest.raises(UserError, match="^data.sources: no training data given$"):
        build(DataConfig(), *opt_tok, tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match=r"^data.sources \(empty.jsonl\): no rows$"):
        build(DataConfig(sources=[{"path": "empty.jsonl"}]), *opt_tok, tmp_path)


def test_eval_fraction_holds_out_disjoint_rows(tmp_path, opt_tok):
    tok, eos = opt_tok
    write_pairs(tmp_path / "d.json", 20, "t")
    cfg = DataConfig(sources=[{"path": "d.json"}], eval_fraction=0.25, max_seq_len=64)
    train, evals = build(cfg, tok, eos, tmp_path)
    a, b = decoded(tok, train), decoded(tok, evals)
    assert len(a) == 15 and len(b) == 5 and not set(a) & set(b)
    assert sorted(a + b) == sorted(f" t question {i} answer {i}" for i in range(20))
    assert decoded(tok, build(cfg, tok, eos, tmp_path)[1]) == b
    assert len(build(cfg.model_copy(update={"eval_fraction": 0.0}), tok, eos, tmp_path)[1]) == 0


def test_blended_weights(tmp_path, opt_tok):
    tok, eos = opt_tok
    write_pairs(tmp_path / "a.json", 10, "a")
    write_pairs(tmp_path / "b.json", 10, "b")
    cfg = DataConfig(
        sources=[{"path": "a.json", "weight": 2}, {"path": "b.json", "weight": 0.5}],
        max_seq_len=64,
    )
    texts = decoded(tok, build(cfg, tok, eos, tmp_path)[0])
    from_a = [t for t in texts if t.startswith(" a ")]
    from_b = [t for t in texts if t.startswith(" b ")]
    assert len(from_a) == 20 and len(set(from_a)) == 10
    assert len(from_b) == 5 and len(set(from_b)) == 5
    assert not all(t.startswith(" a ") for t in texts[:20])  # blended, not a + a + b
    assert texts == decoded(tok, build(cfg, tok, eos, tmp_path)[0])


def test_absolute_paths_ignore_base_dir(tmp_path, opt_tok):
    tok, eos = opt_tok
    write_pairs(tmp_path / "d.json", 3, "t")
    cfg = DataConfig(sources=[{"path": str(tmp_path / "d.json")}])
    assert len(build(cfg, tok, eos, tmp_path / "elsewhere")[0]) == 3


def test_data_modules_import_no_framework():
    modules = ["batches", "examples", "pipeline", "sources", "split", "tokenizer"]
    code = "".join(f"import interop.data.{m}\n" for m in modules) + (
        "import json, sys; print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & {"torch", "jax", "flax", "transformers", "tokenizers", "deepspeed"}
