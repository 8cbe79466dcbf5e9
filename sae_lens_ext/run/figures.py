"""Figures every run gets (matplotlib, Agg backend; import inside commands)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

#: Panels of ``training_curves.png`` besides one per loss term: (key, title, y label).
CURVE_PANELS = (
    ("loss", "Total loss", "loss (sum of weighted terms)"),
    ("explained_variance", "Explained variance (batch)", "fraction of variance"),
    ("l0", "L0 (batch)", "active latents per sample"),
    ("trainer_dead_latents", "Dead latents (trainer window)", "latents"),
)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def curve_keys(logs: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """Panels to draw: total loss, every logged loss term, then the quality panels."""
    present = {k for rows in logs.values() for r in rows for k in r}
    terms = sorted(k for k in present if k.endswith("_loss"))
    panels = [CURVE_PANELS[0]]
    panels += [(k, f"{k.removesuffix('_loss')} term", "weighted loss") for k in terms]
    panels += [p for p in CURVE_PANELS[1:] if p[0] in present]
    return panels


def plot_training_curves(logs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """``training_curves.png``: total loss, each loss term (the ordering, temporal... losses
    included), explained variance, L0 and dead latents over training samples; one line per run."""
    plt = pyplot()
    panels = curve_keys(logs)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (key, title, ylabel) in zip(axes.flat, panels, strict=False):
        for name, records in logs.items():
            pts = [(r["samples"], r[key]) for r in records if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=name)
        ax.set_title(title)
        ax.set_xlabel("training samples")
        ax.set_ylabel(ylabel)
        values = [r[key] for rs in logs.values() for r in rs if r.get(key) is not None]
        if key.endswith("loss") and values and min(values) > 0 and max(values) > 20 * min(values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    return save_figure(fig, path)


def plot_metric_bars(
    metrics: dict[str, dict[str, Any]],
    keys: list[tuple[str, str]],
    path: Path,
    title: str = "",
) -> Path:
    """One bar panel per ``(key, label)``, one bar per run, value labels on the bars; a
    run without the metric gets no bar and an "n/a" mark (never a 0)."""
    plt = pyplot()
    names = list(metrics)
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    width = max(3.4, 0.9 * len(names) + 1.6)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.6 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, keys, strict=False):
        for i, name in enumerate(names):
            value = metrics[name].get(key)
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                bar = ax.bar(i, value, color=f"C{i}")
                ax.bar_label(bar, fmt="%.3g", fontsize="small")
            else:
                ax.annotate(
                    "n/a",
                    (i, 0),
                    xytext=(0, 4),
                    textcoords="offset points",
                    ha="center",
                    fontsize="small",
                    color="gray",
                )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize="small")
        ax.set_title(textwrap.fill(label, 34), fontsize="medium")
        ax.set_ylabel(key)
        ax.axhline(0, color="black", linewidth=0.5)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
