"""`torch-ref train`: the PyTorch/DeepSpeed reference trainer.

It reads the same `RunConfig` as `jax-sft train` and computes the same thing step by step:
the same batches (`interop.data`), the same token-averaged loss over the whole global
batch, AdamW with the same groups, clipping and schedule (`interop.schedules`), the same
sparse and LoRA semantics. One file per concept: `distributed` (process group), `model`
(loading, vocabulary, adapters), `sparse`, `lora`, `data`, `loss`, `optimizer`,
`ds_config`, `trainer` (the engine; the loop is `interop.loop`), `export`, `api`
(`torch_ref.initialize`), `run` (the command's body).
"""
