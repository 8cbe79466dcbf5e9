"""Plots of the ``sae-lens`` command (matplotlib, Agg backend; import inside commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CURVES = ("loss", "mse_loss", "explained_variance", "l0", "dead_latents")


def plot_training_curves(logs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """One panel per logged quantity (loss, MSE, explained variance, L0, dead latents),
    one line per run, against training samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVES if any(k in r for rows in logs.values() for r in rows)]
    if not keys:
        keys = ["loss"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, rows in logs.items():
            pts = [(r["samples"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=name)
        ax.set_title(key)
        ax.set_xlabel("training samples")
        if key in ("loss", "mse_loss"):
            ax.set_yscale("log")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metrics_comparison(
    metrics: dict[str, dict[str, Any]], keys: tuple[str, ...], path: Path
) -> Path:
    """One bar panel per metric present in any run, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [k for k in keys if any(isinstance(m.get(k), (int, float)) for m in metrics.values())]
    fig, axes = plt.subplots(
        1, max(1, len(shown)), figsize=(3.2 * max(1, len(shown)), 3.2), squeeze=False
    )
    names = list(metrics)
    for ax, key in zip(axes[0], shown, strict=False):
        values = [float(metrics[n].get(key, float("nan")) or 0.0) for n in names]
        ax.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize="small")
        ax.set_title(key)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
