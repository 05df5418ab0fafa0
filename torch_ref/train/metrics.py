"""`metrics.jsonl` in the JAX trainer's schema, and TensorBoard when asked.

One object per optimizer step (`step`, `loss`, `lr`, `grad_norm`, `tokens`,
`tokens_per_s`) and per evaluation (`step`, `eval_loss`, `eval_ppl`); only rank 0
writes. On resume, entries past the restored step are dropped.
"""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, *, tensorboard_dir: Path | None, enabled: bool):
        self.path, self.enabled = path, enabled
        self.writer = None
        if enabled and tensorboard_dir is not None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, step: int) -> None:
        """Drop entries of steps > `step`."""
        if not self.enabled or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, entry: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.writer is not None:
            for key, value in entry.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, entry["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
