"""Figures of runs and comparisons (matplotlib, Agg backend; import inside commands).

Each figure has a ``build_*`` function that returns the matplotlib ``Figure`` (so tests can
inspect its panels, series and labels) and is written by :func:`save_figure`. The
comparison figures read :class:`~sae_lens_ext.run.results.RunResults`; a run that lacks a
metric gets an "n/a" mark where its bar would be, never a bar of height 0.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_ext.run.results import is_number

if TYPE_CHECKING:
    from sae_lens_ext.run.results import RunResults

#: Panels of ``training_curves.png`` besides one per loss term: (key, title, y label).
CURVE_PANELS = (
    ("loss", "Total loss", "loss (sum of weighted terms)"),
    ("explained_variance", "Explained variance (batch)", "fraction of variance"),
    ("l0", "L0 (batch)", "active latents per sample"),
    ("trainer_dead_latents", "Dead latents (trainer window)", "latents"),
)
NA = "n/a"
#: Values of a bar panel all within this of 0 are drawn as zero (a sane axis, said so).
ZERO = 1e-12
#: Marks a value that is the run's own evaluation where SAE-Bench's is missing.
FALLBACK_MARK = "†"
FALLBACK_NOTE = (
    f"{FALLBACK_MARK}: the run's own evaluation (sae-lens demo/evaluate); unmarked: SAE-Bench core"
)
SAE_BENCH_NOTE = "source: SAE-Bench core"
OWN_NOTE = "source: the runs' own evaluation (sae-lens demo / sae-lens evaluate)"


@dataclass(frozen=True)
class Series:
    """One metric drawn for every run: its label and where to read it (first key found;
    keys after the first are fallbacks, marked in the figure)."""

    label: str
    keys: tuple[str, ...]


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


def _grid(n: int, cols: int, width: float, height: float) -> tuple[Any, list[Any]]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# --- bars -------------------------------------------------------------------------------------


def bar_panel(
    ax: Any, names: Sequence[str], series: Sequence[tuple[str, Sequence[tuple[Any, bool]]]]
) -> None:
    """Grouped bars: one group per run (``names``), one bar per series, each labelled with
    its value (``(value, marked)`` pairs; a marked value gets a dagger). A missing value
    gets an "n/a" mark at its place inside the panel, never a bar; a panel without any
    value, or whose values are all 0, says so in its middle on an axis of -1 to 1."""
    width = 0.8 / len(series)
    na_place = ax.get_xaxis_transform()  # x: data, y: fraction of the panel's height
    for j, (label, values) in enumerate(series):
        offset = (j - (len(series) - 1) / 2) * width
        legend: str | None = label if any(is_number(v) for v, _ in values) else f"{label} ({NA})"
        for i, (value, marked) in enumerate(values):
            x = i + offset
            if not is_number(value):
                ax.text(x, 0.5, NA, transform=na_place, ha="center", va="center",
                        fontsize="small", color="gray")  # fmt: skip
                continue
            bars = ax.bar(x, value, width, color=f"C{j}", label=legend)
            legend = None  # one legend entry per series
            text = f"{value:.3g}{FALLBACK_MARK if marked else ''}"
            ax.bar_label(bars, labels=[text], fontsize="x-small", padding=2)
        if legend is not None:  # nothing drawn: keep the series in the legend
            ax.bar(0, 0, 0, color=f"C{j}", label=legend)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize="small")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)
    ax.ticklabel_format(axis="y", useOffset=False)  # no offset text over the title
    numbers = [v for _, values in series for v, _ in values if is_number(v)]
    empty = None
    if not numbers:
        empty = f"{NA}: no run has this metric"
    elif max(abs(v) for v in numbers) <= ZERO:
        everywhere = len(numbers) == sum(len(values) for _, values in series)
        empty = "0 for every run" if everywhere else "0 where measured"
    if empty is not None:
        ax.set_ylim(-1, 1)  # nothing to scale to
        ax.text(0.5, 0.75, empty, transform=ax.transAxes, ha="center", va="center",
                color="dimgray", bbox={"facecolor": "white", "edgecolor": "none"})  # fmt: skip
    if len(series) > 1:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _values(runs: Sequence[RunResults], keys: tuple[str, ...]) -> tuple[list[Any], list[bool]]:
    """Each run's value of the first of ``keys`` it has, and whether that was a fallback."""
    values, fallback = [], []
    for run in runs:
        found = next((k for k in keys if k in run.values), None)
        values.append(run.values.get(found) if found else None)
        fallback.append(found is not None and found != keys[0])
    return values, fallback


def build_bar_figure(
    runs: Sequence[RunResults],
    panels: Sequence[tuple[str, str, Sequence[Series]]],
    title: str,
    cols: int = 1,
) -> Any:
    """One bar panel per ``(title, y label, series)``; runs on the x axis. Where a series
    has fallback keys and the runs mix sources, fallback values are marked (and a note says
    so); a note names the source when all values come from one."""
    names = [r.name for r in runs]
    fig, axes = _grid(len(panels), cols, max(6.5, 1.1 * len(runs) + 3.0), 3.8)
    sources: set[bool] = set()
    for ax, (panel_title, ylabel, series) in zip(axes, panels, strict=True):
        drawn = []
        for s in series:
            values, fallback = _values(runs, s.keys)
            used = {f for v, f in zip(values, fallback, strict=True) if is_number(v)}
            sources |= used if len(s.keys) > 1 else set()
            mixed = len(used) > 1
            drawn.append(
                (s.label, [(v, f and mixed) for v, f in zip(values, fallback, strict=True)])
            )
        bar_panel(ax, names, drawn)
        ax.set_title(panel_title)
        ax.set_ylabel(textwrap.fill(ylabel, 38), fontsize="small")
    fig.suptitle(title)
    note = {frozenset({False}): SAE_BENCH_NOTE, frozenset({True}): OWN_NOTE}
    text = FALLBACK_NOTE if len(sources) > 1 else note.get(frozenset(sources))
    if text:
        fig.text(0.01, 0.005, text, fontsize="x-small", color="dimgray")
    return fig


def build_training_loss_comparison(runs: Sequence[RunResults]) -> Any:
    """``training_loss_comparison.png``: the last logged training loss of each run."""
    series = [Series("final loss", ("final_loss",))]
    return build_bar_figure(
        runs,
        [("Final training loss", "loss at the last logged step (weighted sum of terms)", series)],
        "Training loss by run",
    )


def build_reconstruction_metrics(runs: Sequence[RunResults]) -> Any:
    """``reconstruction_metrics.png``: KL-divergence score and cosine similarity per run."""
    return build_bar_figure(
        runs,
        [
            (
                "KL-divergence score",
                "score (1 = model's output unchanged, 0 = ablated)",
                [Series("KL score", ("core.kl_div_score", "kl_div_score"))],
            ),
            (
                "Cosine similarity (input, reconstruction)",
                "mean cosine (-1 to 1)",
                [Series("cosine", ("core.cossim", "cossim"))],
            ),
        ],
        "Reconstruction: behaviour preserved and reconstruction quality",
        cols=2,
    )


def build_metrics_comparison(runs: Sequence[RunResults]) -> Any:
    """``metrics_comparison.png``: reconstruction (explained variance, cosine), sparsity
    (L0, L1) and model preservation (CE-loss score) panels."""
    return build_bar_figure(
        runs,
        [
            (
                "Reconstruction quality",
                "fraction (1 = perfect)",
                [
                    Series("explained variance", ("core.explained_variance", "explained_variance")),
                    Series("cosine similarity", ("core.cossim", "cossim")),
                ],
            ),
            (
                "Sparsity",
                "per token: active latents (L0), sum of activations (L1)",
                [
                    Series("L0", ("core.l0", "l0")),
                    Series("L1", ("core.l1", "l1")),
                ],
            ),
            (
                "Model preservation",
                "CE-loss score (1 = CE loss unchanged, 0 = ablated)",
                [
                    Series("CE-loss score", ("core.ce_loss_score", "ce_loss_score")),
                ],
            ),
        ],
        "Reconstruction, sparsity and model preservation by run",
    )


def build_absorption_metrics(runs: Sequence[RunResults]) -> Any:
    """``absorption_metrics.png``: SAE-Bench absorption per run (mean absorption fraction,
    mean number of split features) and the absorption fraction per first letter."""
    fig, axes = _grid(3, 3, max(5.0, 1.1 * len(runs) + 2.5), 3.8)
    names = [r.name for r in runs]
    panels = (
        (
            "Mean absorption score",
            "mean absorption fraction (0 = none)",
            "absorption.mean_absorption_fraction_score",
        ),
        (
            "Mean split features",
            "latents per first-letter feature",
            "absorption.mean_num_split_features",
        ),
    )
    for ax, (title, ylabel, key) in zip(axes[:2], panels, strict=True):
        bar_panel(ax, names, [(title, [(r.values.get(key), False) for r in runs])])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    ax = axes[2]
    for i, run in enumerate(runs):
        details = run.bench.get("absorption", {}).get("eval_result_details") or []
        points = [(d["first_letter"], d["mean_absorption_fraction"]) for d in details]
        run_line(ax, i, run.name, sorted(points), markersize=3)
    ax.set_title("Absorption by first letter")
    ax.set_xlabel("first letter")
    ax.set_ylabel("mean absorption fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.suptitle("Feature absorption (SAE-Bench)")
    return fig


def run_line(ax: Any, i: int, name: str, points: list[tuple[Any, Any]], **style: Any) -> None:
    """Run ``i``'s line through ``points`` (in x order); without points, only its legend
    entry, marked n/a."""
    if points:
        ax.plot(*zip(*points, strict=True), "o-", color=f"C{i}", label=name, **style)
    else:
        ax.plot([], [], color=f"C{i}", label=f"{name} ({NA})")


def scr_thresholds(runs: Sequence[RunResults], prefix: str) -> list[int]:
    """The thresholds ``N`` of ``scr.<prefix>N`` any run has, ascending."""
    found = {
        int(k.rsplit("_", 1)[1])
        for r in runs
        for k in r.values
        if k.startswith(f"scr.{prefix}") and k.rsplit("_", 1)[1].isdigit()
    }
    return sorted(found)


def build_scr_threshold_comparison(runs: Sequence[RunResults]) -> Any:
    """``scr_threshold_comparison.png``: SAE-Bench SCR against the number of ablated latents,
    one line per run (the SCR metric, and its first direction as the logs report it)."""
    panels = (
        ("SCR metric", "scr_metric_threshold_"),
        ("SCR, direction 1", "scr_dir1_threshold_"),
    )
    fig, axes = _grid(len(panels), 2, 6.0, 4.0)
    for ax, (title, prefix) in zip(axes, panels, strict=True):
        thresholds = scr_thresholds(runs, prefix)
        for i, run in enumerate(runs):
            points = [(n, run.values.get(f"scr.{prefix}{n}")) for n in thresholds]
            run_line(ax, i, run.name, [(n, v) for n, v in points if is_number(v)])
        ax.set_xscale("log")
        ax.set_xticks(thresholds, [str(n) for n in thresholds])
        ax.minorticks_off()
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(title)
        ax.set_xlabel("latents ablated (threshold N)")
        ax.set_ylabel("SCR score (fraction of spurious signal removed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle("Spurious correlation removal by threshold (SAE-Bench)")
    return fig


def build_metric_bars(
    metrics: dict[str, dict[str, Any]], keys: list[tuple[str, str]], title: str = ""
) -> Any:
    """One bar panel per ``(key, label)``, one bar per run (``metrics``: run -> values),
    value labels on the bars; a run without the metric gets "n/a" (never a 0)."""
    names = list(metrics)
    fig, axes = _grid(len(keys), 4, max(3.4, 0.9 * len(names) + 1.6), 3.6)
    for ax, (key, label) in zip(axes, keys, strict=True):
        bar_panel(ax, names, [(label, [(metrics[n].get(key), False) for n in names])])
        ax.set_title(textwrap.fill(label, 34), fontsize="medium")
        ax.set_ylabel(key)
    if title:
        fig.suptitle(title)
    return fig


def plot_metric_bars(
    metrics: dict[str, dict[str, Any]], keys: list[tuple[str, str]], path: Path, title: str = ""
) -> Path:
    return save_figure(build_metric_bars(metrics, keys, title), path)


# --- curves -----------------------------------------------------------------------------------


def curve_keys(logs: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """Panels to draw: total loss, every logged loss term, then the quality panels."""
    present = {k for rows in logs.values() for r in rows for k in r}
    terms = sorted(k for k in present if k.endswith("_loss"))
    panels = [CURVE_PANELS[0]]
    panels += [(k, f"{k.removesuffix('_loss')} term", "weighted loss") for k in terms]
    panels += [p for p in CURVE_PANELS[1:] if p[0] in present]
    return panels


def build_training_curves(logs: dict[str, list[dict[str, Any]]]) -> Any:
    """``training_curves.png``: total loss, each loss term (whatever the architecture logs),
    explained variance, L0 and dead latents over training steps; one line per run."""
    panels = curve_keys(logs)
    fig, axes = _grid(len(panels), 3, 4.2, 3.2)
    for ax, (key, title, ylabel) in zip(axes, panels, strict=True):
        for i, (name, records) in enumerate(logs.items()):
            pts = [(r["step"], r[key]) for r in records if is_number(r.get(key))]
            if pts:  # markers where a line would be too short to see
                marker = "o" if len(pts) < 20 else None
                ax.plot(*zip(*pts, strict=True), color=f"C{i}", label=name, marker=marker,
                        markersize=3)  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        values = [r[key] for rs in logs.values() for r in rs if is_number(r.get(key))]
        if key.endswith("loss") and values and min(values) > 0 and max(values) > 20 * min(values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def plot_training_curves(logs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    return save_figure(build_training_curves(logs), path)
