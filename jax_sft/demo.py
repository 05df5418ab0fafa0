"""`make demo`: create a tiny Llama, convert it HF -> Orbax -> HF, and compare the three.

Until the trainer lands this is the main job on the embedded default; each step is the
command a user would type, printed before it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from interop.outputs import output_dir
from interop.tiny_configs import tiny_config
from jax_sft import cli
from jax_sft.checkpoints.loading import write_checkpoint
from jax_sft.models import registry

OUT = Path("out/demo")
MODEL = "tiny-llama"


def write_tiny_hf(dst: Path, name: str = MODEL, seed: int = 0) -> None:
    """A randomly initialised named tiny model, written as a Hugging Face directory."""
    config = tiny_config(name)
    model = registry.build_model(config, seed=seed)
    flat = {k: np.asarray(v) for k, v in registry.flat_state(model).items()}
    with output_dir(dst, overwrite=True) as tmp:
        write_checkpoint(tmp, "hf", config, flat)


def main() -> int:
    hf, orbax, back = OUT / f"{MODEL}-hf", OUT / f"{MODEL}-orbax", OUT / f"{MODEL}-hf-roundtrip"
    print(f"# a randomly initialised {MODEL}, written as a Hugging Face directory: {hf}")
    write_tiny_hf(hf)
    steps = [
        ["convert", str(hf), str(orbax), "--to", "orbax", "--overwrite"],
        ["convert", str(orbax), str(back), "--to", "hf", "--overwrite"],
        ["compare", str(hf), str(orbax)],
        ["compare", str(hf), str(back), "--json"],
    ]
    for argv in steps:
        print(f"\n$ jax-sft {' '.join(argv)}", flush=True)
        status = cli.main(argv)
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
