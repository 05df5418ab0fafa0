"""DeepSpeed's accelerator, chosen before DeepSpeed is imported: without CUDA it is the
CPU one (skipping DeepSpeed's probing and its warning), unless `DS_ACCELERATOR` says."""

from __future__ import annotations

import os


def default_to_cpu() -> None:
    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
