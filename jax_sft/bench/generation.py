"""Generation speed, ours against `transformers`, on one ~30M-parameter Llama.

The model (random weights) is written once as an HF directory that both sides load. For
batch 1 and 8, prompts of 64 tokens and 128 new tokens (eos never stops a row), each
round times our prefill (`jax_sft.generate.prefill`, the bucket through the model into
the cache) and decode (`decode`: 127 further tokens, one `while_loop` step each), then
`transformers` in its own process (`torch-ref bench-generate`: a cached forward over the
prompts, and `generate` minus it). Rounds alternate the two, so machine load falls on
both alike; the table gives medians, tokens/s (prefill: prompt tokens; decode: new
tokens) and the decode ratio. Recomputing the whole sequence every step (no cache) is
timed once per batch size, to show what the cache buys.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interop.errors import BackendError
from interop.tiny_configs import tiny_config
from jax_sft.checkpoints.loading import write_checkpoint
from jax_sft.generate import Sampling, bucket_length, decode, prefill, recomputed
from jax_sft.models import registry

CONFIG = tiny_config("llama-30m")
PROMPT, NEW = 64, 128


def timed(graphdef, params, ids, mask) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation of NEW tokens."""
    kw = {"steps": NEW, "sampling": Sampling()}
    key = jax.random.key(0)
    start = time.perf_counter()
    first, cache = prefill(graphdef, params, ids, mask, key, **kw)
    first.block_until_ready()
    middle = time.perf_counter()
    decode(graphdef, params, first, cache, key, **kw, eos=-1, pad=0).block_until_ready()
    return middle - start, time.perf_counter() - middle


def _theirs(model_dir: Path, batch: int) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "torch_ref.cli", "bench-generate", str(model_dir)]
    cmd += ["--batch", str(batch), "--prompt-len", str(PROMPT), "--new", str(NEW)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackendError(f"the transformers side failed:\n{proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["prefill_s"], result["decode_s"]


def benchmark(rounds: int = 3) -> list[dict]:
    """One row per batch size: medians of both sides and the recompute time."""
    model = registry.build_model(CONFIG)
    graphdef, params = nnx.split(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        flat = {k: np.asarray(v) for k, v in registry.flat_state(model).items()}
        write_checkpoint(Path(tmp), "hf", CONFIG, flat)
        for batch in (1, 8):
            rng = np.random.default_rng(batch)
            ids = jnp.asarray(rng.integers(3, CONFIG["vocab_size"], (batch, PROMPT)), jnp.int32)
            mask = jnp.ones_like(ids)
            assert bucket_length(PROMPT) == PROMPT
            timed(graphdef, params, ids, mask)  # compile
            ours, theirs = [], []
            for _ in range(rounds):
                ours.append(timed(graphdef, params, ids, mask))
                theirs.append(_theirs(Path(tmp), batch))
            recompute = _recompute_seconds(graphdef, params, ids, mask)
            rows.append(_row(batch, ours, theirs, recompute))
    return rows


def _recompute_seconds(graphdef, params, ids, mask) -> float:
    kw = {"steps": NEW, "sampling": Sampling(), "eos": -1, "pad": 0}
    recomputed(graphdef, params, ids, mask, jax.random.key(0), **kw).block_until_ready()
    start = time.perf_counter()
    recomputed(graphdef, params, ids, mask, jax.random.key(0), **kw).block_until_ready()
    return time.perf_counter() - start


def _row(batch: int, ours: list, theirs: list, recompute: float) -> dict:
    def med(pairs: list, i: int) -> float:
        return statistics.median(p[i] for p in pairs)

    decoded = batch * (NEW - 1)
    row = {
        "batch": batch,
        "ours_prefill_tok_s": batch * PROMPT / med(ours, 0),
        "ours_decode_tok_s": decoded / med(ours, 1),
        "hf_prefill_tok_s": batch * PROMPT / med(theirs, 0),
        "hf_decode_tok_s": decoded / med(theirs, 1),
        "recompute_tok_s": batch * NEW / recompute,
        "cached_tok_s": batch * NEW / (med(ours, 0) + med(ours, 1)),
    }
    row["decode_ratio"] = row["ours_decode_tok_s"] / row["hf_decode_tok_s"]
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| batch | prefill tok/s (ours / transformers) | decode tok/s (ours / transformers) "
        "| decode ratio | whole generation tok/s (cache / recompute) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['ours_prefill_tok_s']:,.0f} / {r['hf_prefill_tok_s']:,.0f} "
            f"| {r['ours_decode_tok_s']:,.0f} / {r['hf_decode_tok_s']:,.0f} "
            f"| {r['decode_ratio']:.2f}x "
            f"| {r['cached_tok_s']:,.0f} / {r['recompute_tok_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def markers(command: str) -> tuple[str, str]:
    """The comments that fence the figures `command` writes into a page."""
    return f"<!-- {command}: begin -->", f"<!-- {command}: end -->"


BEGIN, END = markers("bench --generate")


def write_docs(path: Path, text: str, command: str = "bench --generate") -> None:
    """Put `text` between `command`'s markers in `path` (created with them when missing),
    keeping whatever else the page says: the analysis around the figures."""
    begin, end = markers(command)
    section = f"{begin}\n{text}{end}\n"
    old = path.read_text() if path.exists() else "# Generation speed\n\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        new = head + section + ("\n" + after if after else "")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
