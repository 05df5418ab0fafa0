"""Front ends that turn other tools' configs into `RunConfig` data.

- `deepspeed_json`: a DeepSpeed `ds_config.json` -> overrides for a YAML config.
- `dschat`: DeepSpeed-Chat step-1 `main.py` flags -> a whole run config.

Each returns a nested dict of RunConfig fields plus human notes for what was accepted but
has no effect here, so nothing a user wrote disappears without a word.
"""
