"""The two figures of the research log, from tables and training histories."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics_comparison(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write ``metrics_comparison.png``: reconstruction (explained variance, cosine
    similarity), sparsity (L0, L1) and CE-loss score per run (one bar group per row,
    labelled by ``name``; a metric missing from a row is drawn as a gap and the panel
    says "n/a" when no row has it)."""
    plt = _plt()
    names = [str(r.get("name", i)) for i, r in enumerate(rows)]
    panels = [
        ("Reconstruction", ["explained_variance", "cossim"]),
        ("Sparsity", ["l0", "l1"]),
        ("Model preservation", ["ce_loss_score"]),
    ]
    fig, axes = plt.subplots(3, 1, figsize=(max(6, 1.2 * len(rows) + 3), 9))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        width = 0.8 / len(keys)
        any_value = False
        for j, key in enumerate(keys):
            values = [float(r[key]) if r.get(key) is not None else math.nan for r in rows]
            any_value |= any(not math.isnan(v) for v in values)
            ax.bar([i + j * width for i in range(len(rows))], values, width, label=key)
        ax.set_title(title if any_value else f"{title} (n/a: not measured)")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], names, rotation=20)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | Path,
    reconstruction_key: str = "mse_loss",
    sparsity_key: str = "l1_loss",
) -> Path:
    """Write ``training_curves.png``: reconstruction and sparsity loss over steps, one line
    per run (``histories``: name -> rows with ``step`` and the loss keys, as
    :class:`~.train.TrainResult.history`)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for ax, key, title in (
        (axes[0], reconstruction_key, "Reconstruction loss"),
        (axes[1], sparsity_key, "Sparsity loss"),
    ):
        for name, history in histories.items():
            pts = [(h["step"], h[key]) for h in history if key in h]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=name)
        ax.set_title(title)
        ax.set_ylabel(key)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_xlabel("training step")
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``; return its path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path
