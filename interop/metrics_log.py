"""Where a run reports: `metrics.jsonl`, TensorBoard event files, a terminal progress line.

`metrics.jsonl` holds one JSON object per logged step (`step`, `loss`, `lr`, `grad_norm`,
`tokens`, `tokens_per_s`, and `distill` when the run distils) and per evaluation
(`step`, `eval_loss`, `eval_ppl`). On resume the entries past the restored step are
dropped, so the file always describes one run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from interop.errors import UserError


class MetricsLog:
    def __init__(
        self,
        path: Path,
        *,
        tensorboard_dir: Path | None,
        progress: bool = False,
        enabled: bool = True,
    ):
        """`enabled=False` (processes other than 0) makes every call a no-op."""
        self.path = path
        self.enabled = enabled
        self.progress = enabled and progress and sys.stderr.isatty()
        self.writer = None
        if tensorboard_dir is not None and enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, step: int) -> None:
        """Drop entries of steps > `step` (left by a run that died after its last checkpoint;
        -1 drops all). A last line cut short by a kill is dropped too; a bad line before
        it is the user's to mend."""
        if not self.enabled or not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = []
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
                if number == len(lines):
                    break
                raise UserError(f"{self.path}:{number}: not a metrics line")
            if entry["step"] <= step:
                kept.append(line)
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

    def show(
        self,
        step: int,
        total: int,
        loss: float,
        tokens_per_s: float,
        started: float,
        start_step: int,
    ) -> None:
        """One updating terminal line: step, loss, tokens/s and ETA."""
        if not self.progress:
            return
        done = step - start_step
        eta = (time.monotonic() - started) / max(done, 1) * (total - step)
        bar = "#" * int(20 * step / total)
        sys.stderr.write(
            f"\r[{bar:<20}] {step}/{total} loss {loss:.4f} {tokens_per_s:,.0f} tok/s "
            f"ETA {int(eta) // 60}:{int(eta) % 60:02d} "
        )
        if step == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
