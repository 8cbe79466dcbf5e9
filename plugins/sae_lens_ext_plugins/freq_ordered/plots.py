"""The log's two frequency figures, from a trained SAE, a frequency vector or saved runs.

Each figure has a ``build_*`` function that returns the matplotlib ``Figure`` (its panel,
series and labels can be inspected); :func:`plot_frequencies` writes both, for
``sae-lens demo``/``train`` (``run_figures``) and, per run folder, ``sae-lens compare``
(``compare_figures``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

FREQUENCIES_PNG = "feature_frequencies.png"
ORDERING_PNG = "frequency_ordering.png"
#: Where ``sae-lens compare`` reads each run's frequencies from.
SAVED_SOURCE = "sparsity.safetensors (last sparsity window of training)"


def _frequencies(sae_or_frequencies: Any) -> torch.Tensor:
    if isinstance(sae_or_frequencies, torch.Tensor):
        return sae_or_frequencies.detach().float().flatten().cpu()
    buffer = getattr(sae_or_frequencies, "latent_frequency", None)
    if buffer is None:
        if hasattr(sae_or_frequencies, "cfg"):
            raise ValueError(
                "plot_frequencies: this SAE has no latent_frequency buffer; pass the "
                "frequencies from metrics.measure_frequencies(sae, activations) instead"
            )
        return torch.as_tensor(sae_or_frequencies, dtype=torch.float32).flatten()
    return buffer.detach().float().flatten().cpu()


def _shown(frequencies: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Frequencies with never-fired latents drawn at half the smallest positive one."""
    positive = frequencies[frequencies > 0]
    floor = float(positive.min()) / 2 if positive.numel() else 1e-6
    return frequencies.clamp_min(floor), floor, int((frequencies == 0).sum())


def _titled(ax: Any, fig: Any, run: str, title: str, source: str) -> None:
    ax.set_yscale("log")
    ax.set_ylabel("firing frequency (fraction of tokens)")
    ax.set_title(f"{run}: {title}" if run else title[:1].upper() + title[1:])
    if source:
        fig.text(0.01, 0.005, f"source: {source}", fontsize="x-small", color="dimgray")


def build_feature_frequencies(frequencies: torch.Tensor, run: str = "", source: str = "") -> Any:
    """``feature_frequencies.png``: the firing frequency of each latent, by index."""
    from sae_lens_ext.api import pyplot

    shown, floor, dead = _shown(frequencies)
    fig, ax = pyplot().subplots(figsize=(8, 4))
    ax.bar(range(len(shown)), shown.numpy(), width=1.0, color="C0", label="firing frequency")
    ax.set_xlabel("latent index")
    title = f"firing frequency by latent ({dead} never fired, drawn at {floor:.1e})"
    _titled(ax, fig, run, title, source)
    return fig


def build_frequency_ordering(frequencies: torch.Tensor, run: str = "", source: str = "") -> Any:
    """``frequency_ordering.png``: frequencies sorted in decreasing order against the same
    frequencies by latent index, with Spearman(index, frequency) in the title."""
    from sae_lens_ext.api import pyplot
    from sae_lens_ext_plugins.freq_ordered.metrics import ordering_spearman

    shown, _, _ = _shown(frequencies)
    index = range(len(shown))
    fig, ax = pyplot().subplots(figsize=(8, 4))
    ax.plot(
        index,
        torch.sort(shown, descending=True).values.numpy(),
        color="C1",
        label="sorted by frequency",
    )
    ax.plot(index, shown.numpy(), ".", markersize=2, alpha=0.5, color="C0", label="by latent index")
    ax.set_xlabel("rank (sorted) / latent index")
    rho = ordering_spearman(frequencies)
    _titled(ax, fig, run, f"frequency ordering, Spearman(index, frequency) = {rho:.3f}", source)
    ax.legend(fontsize="small")
    return fig


def plot_frequencies(
    sae_or_frequencies: Any, out_dir: str | Path, run: str = "", source: str = ""
) -> list[Path]:
    """Write ``feature_frequencies.png`` (firing frequency of each latent, by index)
    and ``frequency_ordering.png`` (frequencies sorted in decreasing order, with
    Spearman(index, frequency) in the title) to ``out_dir``; return their paths.

    ``sae_or_frequencies``: a ``freq_ordered`` SAE (its ``latent_frequency`` buffer
    is used) or a ``[d_sae]`` tensor/sequence of frequencies (e.g. from
    :func:`~sae_lens_ext_plugins.freq_ordered.metrics.measure_frequencies`). ``run`` starts
    the titles; ``source`` (where the frequencies come from) is noted under the figures.
    """
    from sae_lens_ext.api import save_figure

    freqs = _frequencies(sae_or_frequencies)
    if freqs.numel() == 0:
        raise ValueError("plot_frequencies: no frequencies to plot")
    out = Path(out_dir)
    return [
        save_figure(build(freqs, run, source), out / name)
        for name, build in (
            (FREQUENCIES_PNG, build_feature_frequencies),
            (ORDERING_PNG, build_frequency_ordering),
        )
    ]


def plot_saved_runs(runs: Sequence[Any], folder: Path) -> list[Path]:
    """Both figures of each saved run (``sae-lens compare``), into ``folder/<run>/``, from
    the frequencies of its last sparsity window of training; a run without them is
    skipped with a line that says so."""
    paths: list[Path] = []
    for run in runs:
        frequencies = run.frequencies()
        if frequencies is None:
            print(f"skipped frequency figures of {run.name}: no {SAVED_SOURCE}")
            continue
        paths += plot_frequencies(frequencies, folder / run.name, run.name, SAVED_SOURCE)
    return paths
