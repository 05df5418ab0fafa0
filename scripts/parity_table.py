"""Reruns every case of the "Measured" table in docs/parity.md and prints its rows.

    .venv/bin/python scripts/parity_table.py [WORK_DIR [NAME_PART]]

Each case is `jax-sft parity configs/parity-tiny.yaml --steps 50` with its settings; a
row gives the max relative loss difference, the final max |param diff| and its tensor,
and the key-projection biases' difference (judged apart, see interop/parity.py), as the
table does, then the full-precision figures and the final logit difference, so two runs
(before and after a change) can be compared digit for digit. NAME_PART reruns only the
cases whose name contains it ("OPT"). About 15-25 minutes for every case on the
project's 2-core machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CONFIG = "configs/parity-tiny.yaml"
OPT = ["model.tiny=tiny-opt"]
SPARSE = ["sparse.method=random", "sparse.density=0.05"]
TWO = ["--torch-procs", "2"]
BF16 = ["--rtol", "2e-2", "--param-atol", "1"]


def lora(mlp: str) -> list[str]:
    return ["lora.rank=4", "lora.alpha=8", f"lora.target_modules=[q_proj,v_proj,{mlp}]"]


def zero(stage: int) -> list[str]:
    return [f"parallel.zero_stage={stage}"]


CASES = [
    ("Llama, dense", [], []),
    ("Llama, sparse random 5%", SPARSE, []),
    ("Llama, LoRA r=4 (q, v, up)", lora("up_proj"), []),
    ("OPT, dense", OPT, []),
    ("OPT, sparse random 5%", OPT + SPARSE, []),
    ("OPT, LoRA r=4 (q, v, fc1)", OPT + lora("fc1"), []),
    ("Llama, dense, ZeRO-2, 2 processes", zero(2), TWO),
    ("Llama, sparse 5%, ZeRO-2, 2 processes", zero(2) + SPARSE, TWO),
    ("Llama, LoRA, ZeRO-2, 2 processes", zero(2) + lora("up_proj"), TWO),
    ("OPT, dense, ZeRO-2, 2 processes", OPT + zero(2), TWO),
    ("OPT, sparse 5%, ZeRO-2, 2 processes", OPT + zero(2) + SPARSE, TWO),
    ("OPT, LoRA, ZeRO-2, 2 processes", OPT + zero(2) + lora("fc1"), TWO),
    ("Llama, dense, ZeRO-3, 2 processes", zero(3), TWO),
    ("Llama, dense, packed rows (`data.packing=true`)", ["data.packing=true"], []),
    ("OPT, dense, packed rows", OPT + ["data.packing=true"], []),
    ("Llama, bf16 compute", ["model.dtype=bfloat16"], BF16),
    ("OPT, bf16 compute", OPT + ["model.dtype=bfloat16"], BF16),
]


def main(work: Path, name_part: str = "") -> None:
    for i, (name, settings, flags) in enumerate(CASES):
        if name_part not in name:
            continue
        out = work / f"case{i}"
        argv = [sys.executable, "-m", "jax_sft.cli", "parity", CONFIG, "--steps", "50"]
        argv += ["--json", "--overwrite", *flags]
        for setting in [f"train.output_dir={out}", *settings]:
            argv += ["--set", setting]
        subprocess.run(argv, capture_output=True, text=True)
        r = json.loads((out / "parity.json").read_text())
        loss, param = r["max_rel_loss_diff"], r["final_max_abs_param_diff"]
        keys = r["final_max_abs_invariant_diff"]
        print(
            f"| {name} | {loss:.1e} | {param:.1e} | {r['worst_tensor']} | "
            f"{'-' if keys is None else f'{keys:.1e}'} | "
            f"(loss {loss!r}, param {param!r}, logits {r['final_max_abs_logit_diff']!r})",
            flush=True,
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/parity-table"), *sys.argv[2:3])
