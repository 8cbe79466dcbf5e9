"""freq_ordered's panel in ``sae-lens browse``, beside the index: the prefix-EV curve.

A frequency-ordered SAE is read from latent 0 down: its first latents should reconstruct
most of the activations. The curve is the explained variance of the reconstruction from
the first ``k`` latents only (:func:`.metrics.prefix_explained_variance`), on the
browser's sample of whole contexts, for any SAE (a baseline's curve is the comparison).
"""

from __future__ import annotations

from typing import Any

from sae_lens_ext.api import BrowserData, Panel, svg_line_chart
from sae_lens_ext_plugins.freq_ordered.metrics import ordering_spearman, prefix_explained_variance

#: Shares of the latents kept (the first ``k``), and tokens of the sample used.
PREFIX_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
CURVE_TOKENS = 8192


def prefix_curve_panel(sae: Any, data: BrowserData) -> Panel:
    """The prefix-EV curve and Spearman(latent index, frequency), as one panel."""
    sample = data.sample.activations
    sample = sample[: max(1, CURVE_TOKENS // sample.shape[1])].to(sae.device, sae.dtype)
    d_sae = data.d_sae
    fractions = [f for f in PREFIX_FRACTIONS if round(f * d_sae) >= 1]
    ev = prefix_explained_variance(sae, sample, fractions)
    chart = svg_line_chart(
        [[ev[f] for f in fractions]],
        x=[100 * f for f in fractions],
        xlabel="first latents kept (% of d_sae)",
        ylabel="explained variance",
        title="prefix explained variance",
    )
    rows = "".join(
        f"<tr><td>first {round(f * d_sae):,}</td><td>{ev[f]:.3f}</td></tr>" for f in fractions
    )
    spearman = ordering_spearman(data.frequencies)
    note = (
        f'<p class="note">Explained variance of the reconstruction from the first k latents '
        f"only (the others zeroed), on {sample.shape[0] * sample.shape[1]:,} tokens. "
        f"Spearman(latent index, frequency over the {data.n_tokens:,} tokens read) = "
        f"<b>{spearman:.3f}</b> (-1: latents ordered by frequency).</p>"
    )
    return Panel(
        "Prefix explained variance", chart + note + f'<table class="logits">{rows}</table>'
    )
