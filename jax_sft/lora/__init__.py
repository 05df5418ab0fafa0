"""LoRA on the JAX backend, with peft's semantics and peft's file format.

A targeted linear weight W stays frozen and trains as W + (alpha / rank) * B @ A, where
A and B are thin factors of rank `lora.rank`: far fewer trained entries, and Adam keeps
moments for the factors alone. `targets` chooses the layers by peft's `target_modules`
rule on Hugging Face module names; `params` creates the factors and merges them into the
parameter tree; `mode` is the training mode (`LoraTraining`); `peft_io` writes and
reads adapters that `peft.PeftModel.from_pretrained` loads (`interop.lora_format`).
"""
