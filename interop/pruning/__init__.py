"""Pruning without a framework: which structures a model has, which entries a rule
removes, masks in the Hugging Face layout, the smaller model a structured cut leaves."""
