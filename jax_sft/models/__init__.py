"""Flax NNX causal-LM families built from Hugging Face `config.json` files.

Each family file is self-contained: config (`from_hf`), modules, forward, and the name
table to HF beside them. `registry` picks the family for a `model_type`.
"""
