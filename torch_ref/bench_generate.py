"""`transformers` generation speed on one model, for `jax-sft bench --generate`.

Prefill is one forward over the prompts with the cache on; decode is `generate` with
exactly N new tokens (greedy, eos ignored) minus that prefill. A warm-up call comes
first; the times are medians over `rounds` calls. Run in its own process, so the JAX
side never imports torch.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
import transformers


def time_generate(model_dir: Path, batch: int, prompt_len: int, new: int, rounds: int) -> dict:
    """{"prefill_s", "decode_s"}: medians over `rounds` of the two phases."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(3, model.config.vocab_size, (batch, prompt_len)))
    mask = torch.ones_like(ids)
    prefill, total = [], []
    with torch.no_grad():
        for _ in range(rounds + 1):
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, use_cache=True)
            middle = time.perf_counter()
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=0,
            )
            end = time.perf_counter()
            prefill.append(middle - start)
            total.append(end - middle)
    prefill, total = prefill[1:], total[1:]
    p, t = statistics.median(prefill), statistics.median(total)
    return {"prefill_s": p, "decode_s": max(t - p, 0.0)}
