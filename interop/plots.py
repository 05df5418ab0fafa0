"""PNG figures the commands write (loss curves, bars); matplotlib without a display."""

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


def grouped_bars(
    dst: Path,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    ylabel: str,
) -> None:
    """Horizontal bars, one group per label and one bar per named series, to the PNG `dst`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(labels) * len(series) + 1.5), dpi=120)
    for k, (name, values) in enumerate(series.items()):
        where = [i + k * height for i in range(len(labels))]
        ax.barh(where, values, height=height, label=name)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst)
    plt.close(fig)
