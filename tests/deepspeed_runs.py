"""DeepSpeed itself writing checkpoints, for the checkpoint tests.

`python tests/deepspeed_runs.py OUT RUN...` (MASTER_PORT set) or the same under
torchrun: for each RUN named `z{stage}_{fp32|bf16}`, two training steps on a tiny Llama
with a tied embedding and a frozen MLP, then `engine.save_checkpoint(OUT/RUN)`. Every
run starts from the same weights (saved as OUT/base, an HF directory) and sees the same
batches, so all runs train the same model."""

import os
import sys

import deepspeed
import torch
import transformers

from torch_ref.train.distributed import skip_shared_memory_kernel

os.environ.setdefault("DS_ACCELERATOR", "cpu")
skip_shared_memory_kernel()
CONFIG = transformers.LlamaConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    max_position_embeddings=64,
)


def run(out: str, name: str) -> None:
    stage, dtype = int(name[1]), name.split("_")[1]
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(CONFIG)
    if name == RUNS[0] and int(os.environ.get("RANK", "0")) == 0:
        model.save_pretrained(f"{out}/base")
    for p in model.model.layers[0].mlp.parameters():
        p.requires_grad_(False)
    ds = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": dtype == "bf16"},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 2}},
    }
    trained = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trained, config=ds)
    for _ in range(2):
        ids = torch.randint(0, CONFIG.vocab_size, (2, 8))
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
    engine.save_checkpoint(f"{out}/{name}")


if __name__ == "__main__":
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    RUNS = sys.argv[2:]
    for run_name in RUNS:
        run(sys.argv[1], run_name)
    if torch.distributed.is_initialized():
        # Every rank's files are written before any rank exits. Then leave without the
        # interpreter's teardown: destroying the gloo group, or the threads behind it at
        # exit, has now and then aborted a rank (std::terminate) after all its work was done.
        torch.distributed.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
