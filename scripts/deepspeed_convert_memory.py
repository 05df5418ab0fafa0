"""Peak memory of converting a DeepSpeed ZeRO checkpoint to HF: `jax-sft convert` beside
DeepSpeed's own `zero_to_fp32.py`, on the same checkpoint (`make bench-deepspeed`).

    python scripts/deepspeed_convert_memory.py [--work DIR] [--hidden 768] [--layers 12]
        [--vocab 32000] [--ranks 2] [--stage 2]

Writes (once per size) a DeepSpeed checkpoint of a randomly initialised Llama trained one
step with `torchrun` and ZeRO, then runs both converters as child processes and reads
each one's peak resident set size from `wait4`. Both outputs are compared bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_checkpoint(work: Path, hidden: int, layers: int, vocab: int, stage: int) -> None:
    """Under torchrun: one ZeRO step of a fresh Llama, saved to WORK/checkpoints."""
    import deepspeed
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    if int(os.environ["RANK"]) == 0:
        config.save_pretrained(work)  # beside checkpoints/, where convert looks
    ds = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": stage},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    ids = torch.randint(0, vocab, (1, 16))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    engine.save_checkpoint(str(work / "checkpoints"))


def peak_rss(argv: list[str]) -> tuple[int, float]:
    """(peak resident bytes of the child, seconds); the child must succeed."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{err[-3000:]}")
    return usage.ru_maxrss * 1024, time.monotonic() - start


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors.numpy import load_file

    ours = {k: v for f in sorted(a.glob("*.safetensors")) for k, v in load_file(f).items()}
    theirs = {k: v for f in sorted(b.glob("*.safetensors")) for k, v in load_file(f).items()}
    shared = set(ours) & set(theirs)
    return bool(shared) and all((ours[k] == theirs[k]).all() for k in shared)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="out/deepspeed-memory")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    size = f"h{args.hidden}-l{args.layers}-v{args.vocab}-z{args.stage}-r{args.ranks}"
    work = Path(args.work) / size
    if args.write:
        write_checkpoint(work, args.hidden, args.layers, args.vocab, args.stage)
        return
    ckpt = work / "checkpoints"
    if not (ckpt / "latest").is_file():
        env = {**os.environ, "DS_ACCELERATOR": "cpu"}
        run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.ranks)]
        subprocess.run(
            [*run, __file__, *sys.argv[1:], "--write"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ours_out, theirs_out = work / "jax-sft-hf", work / "zero_to_fp32-out"
    jax_sft = [
        sys.executable,
        "-m",
        "jax_sft.cli",
        "convert",
        str(ckpt),
        str(ours_out),
        "--to",
        "hf",
        "--overwrite",
    ]
    zero_to_fp32 = [
        sys.executable,
        str(ckpt / "zero_to_fp32.py"),
        str(ckpt),
        str(theirs_out),
        "--safe_serialization",
    ]
    ours, ours_s = peak_rss(jax_sft)
    theirs, theirs_s = peak_rss(zero_to_fp32)
    on_disk = sum(f.stat().st_size for f in ckpt.rglob("*.pt"))
    model = sum(f.stat().st_size for f in ours_out.glob("*.safetensors"))
    result = {
        "checkpoint": str(ckpt),
        "checkpoint_bytes": on_disk,
        "model_fp32_bytes": model,
        "jax_sft_convert_peak_rss": ours,
        "zero_to_fp32_peak_rss": theirs,
        "ratio": ours / theirs,
        "jax_sft_convert_s": ours_s,
        "zero_to_fp32_s": theirs_s,
        "identical_tensors": same_tensors(ours_out, theirs_out),
    }
    mb = 1e6
    print(f"checkpoint {ckpt}: {on_disk / mb:,.0f} MB on disk, model {model / mb:,.0f} MB fp32")
    print(f"  jax-sft convert --to hf: peak RSS {ours / mb:,.0f} MB ({ours_s:.1f} s)")
    print(f"  zero_to_fp32.py:         peak RSS {theirs / mb:,.0f} MB ({theirs_s:.1f} s)")
    print(f"  ratio {ours / theirs:.2f}; tensors identical: {result['identical_tensors']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
