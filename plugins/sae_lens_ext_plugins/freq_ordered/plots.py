"""The log's two frequency plots, from a trained SAE or a frequency vector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FREQUENCIES_PNG = "feature_frequencies.png"
ORDERING_PNG = "frequency_ordering.png"


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


def plot_frequencies(sae_or_frequencies: Any, out_dir: str | Path) -> list[Path]:
    """Write ``feature_frequencies.png`` (firing frequency of each latent, by index)
    and ``frequency_ordering.png`` (frequencies sorted in decreasing order, with
    Spearman(index, frequency) in the title) to ``out_dir``; return their paths.

    ``sae_or_frequencies``: a ``freq_ordered`` SAE (its ``latent_frequency`` buffer
    is used) or a ``[d_sae]`` tensor/sequence of frequencies (e.g. from
    :func:`~sae_lens_ext_plugins.freq_ordered.metrics.measure_frequencies`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sae_lens_ext_plugins.freq_ordered.metrics import ordering_spearman

    freqs = _frequencies(sae_or_frequencies)
    if freqs.numel() == 0:
        raise ValueError("plot_frequencies: no frequencies to plot")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = range(freqs.numel())
    positive = freqs[freqs > 0]
    floor = float(positive.min()) / 2 if positive.numel() else 1e-6
    shown = freqs.clamp_min(floor).numpy()
    n_dead = int((freqs == 0).sum())

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(index, shown, width=1.0, color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("latent index")
    ax.set_ylabel("firing frequency")
    ax.set_title(f"Per-latent firing frequency ({n_dead} never fired, drawn at {floor:.1e})")
    fig.tight_layout()
    paths = [out / FREQUENCIES_PNG]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(
        index,
        torch.sort(freqs, descending=True).values.clamp_min(floor).numpy(),
        label="sorted by frequency",
    )
    ax.plot(index, shown, ".", markersize=2, alpha=0.5, label="by latent index")
    ax.set_yscale("log")
    ax.set_xlabel("rank / latent index")
    ax.set_ylabel("firing frequency")
    ax.set_title(f"Frequency ordering: Spearman(index, frequency) = {ordering_spearman(freqs):.3f}")
    ax.legend()
    fig.tight_layout()
    paths.append(out / ORDERING_PNG)
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths
