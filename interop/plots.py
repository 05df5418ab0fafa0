"""PNG figures the commands write (loss curves); matplotlib without a display."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def loss_curves(
    dst: Path,
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    *,
    title: str,
    ylabel: str = "eval loss",
    styles: Mapping[str, dict] | None = None,
) -> None:
    """One line per named (steps, values) curve, written to the PNG `dst`; `styles` gives
    a curve matplotlib line properties (color, linestyle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, label=name, linewidth=1.4, **(styles or {}).get(name, {}))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(dst)
    plt.close(fig)
