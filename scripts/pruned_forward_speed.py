"""Forward speed of a physically smaller pruned model (`make bench-prune`).

A ~30M-parameter Llama (GQA, random weights) is cut one-shot by magnitude in two
structured ways and shrunk with `interop.pruning.shrink`: FFN rows at 50% (half of
`intermediate_size`) and heads at 1/2 (half of the KV groups with their query heads).
`transformers` then runs the forward pass of each, a batch of 4 x 256 tokens, in
alternating rounds in one process (the order rotates each round), so that machine load
hits every model alike. The table gives each model's median and fastest time, and its
speedup: the median over rounds of dense time / its time in the same round, a ratio
that a busy machine (whose load comes and goes between rounds) disturbs far less than
the times themselves.
Unstructured zeros would not be faster: a dense matmul does not skip them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import transformers

from interop.config_files import load_config
from interop.pruning.masks import Pruner
from interop.pruning.shrink import shrink
from interop.tiny_configs import tiny_config

CONFIG = tiny_config("llama-30m")
CUTS = {"rows 50%": "rows", "heads 1/2": "heads"}


def build(config: dict, state: dict[str, np.ndarray] | None = None) -> torch.nn.Module:
    """A Llama in eval mode from a config dict, with `state`'s weights when given."""
    fields = dict(config)
    hf = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = transformers.AutoModelForCausalLM.from_config(hf)
    if state is not None:
        model.load_state_dict({n: torch.from_numpy(a) for n, a in state.items()})
    return model.eval()


def shrunk(dense: torch.nn.Module, pattern: str) -> tuple[torch.nn.Module, dict]:
    """The dense model cut by magnitude at 50% in `pattern`, shrunk; and its config."""
    tensors = {n: p.detach().numpy() for n, p in dense.state_dict().items()}
    overrides = [f"prune.pattern={pattern}", "prune.sparsity=0.5"]
    pruner = Pruner(
        load_config(None, overrides).prune, CONFIG, {n: a.shape for n, a in tensors.items()}
    )
    masks = pruner.cut(0, tensors, pruner.initial_masks())
    config, small, notes = shrink(CONFIG, tensors, pruner, masks)
    if notes:
        raise RuntimeError(f"{pattern} did not shrink: {notes}")
    return build(config, small), config


def timings(models: dict[str, torch.nn.Module], ids: torch.Tensor, rounds: int) -> dict:
    """{name: [seconds per forward]} over `rounds` alternating rounds, after one warm-up."""
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.inference_mode():
        for round_ in range(rounds + 1):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                start = time.perf_counter()
                models[name](input_ids=ids)
                if round_:
                    times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed forwards per model")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's; 1 is steadier when shared)"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"dense": build(CONFIG)}
    configs = {"dense": CONFIG}
    for name, pattern in CUTS.items():
        models[name], configs[name] = shrunk(models["dense"], pattern)
    ids = torch.randint(3, CONFIG["vocab_size"], (args.batch, args.seq))
    times = timings(models, ids, args.rounds)
    results = {}
    for name, model in models.items():
        c = configs[name]
        ratios = [d / t for d, t in zip(times["dense"], times[name], strict=True)]
        results[name] = {
            "parameters": model.num_parameters(),
            "intermediate_size": c["intermediate_size"],
            "heads": f"{c['num_attention_heads']}/{c['num_key_value_heads']}",
            "median_ms": round(1e3 * statistics.median(times[name]), 2),
            "min_ms": round(1e3 * min(times[name]), 2),
            "speedup": round(statistics.median(ratios), 3),
        }
    threads = torch.get_num_threads()
    print(
        f"Llama forward, batch {args.batch} x {args.seq} tokens, fp32 on the CPU "
        f"(torch threads: {threads}), {args.rounds} alternating rounds\n"
    )
    print("| model | parameters | intermediate | heads (q/kv) | median ms | min ms | speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['parameters']:,} | {r['intermediate_size']} | {r['heads']} "
            f"| {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['speedup']:.2f}x |"
        )
    if args.json:
        summary = {"batch": args.batch, "seq": args.seq, "threads": threads, "results": results}
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
