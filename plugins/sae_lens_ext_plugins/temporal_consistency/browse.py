"""The temporal plugins' panels in ``sae-lens browse`` (any SAE): does a latent stay on
across positions?

- on each latent's card: its activation at each position around the maximum of its top
  contexts (one line per context), and its lag-1 autocorrelation on the browser's sample
  of whole contexts (the definition of :func:`.metrics.autocorrelation`: pairs inside a
  context only, mean and variance pooled over every position);
- beside the index: the distribution of that autocorrelation over the browsed latents.
"""

from __future__ import annotations

import html
import math
from typing import Any

import torch

from sae_lens_ext.api import (
    BrowserData,
    Panel,
    lag1_autocorrelation,
    svg_bar_chart,
    svg_line_chart,
)

#: Top contexts drawn per latent.
POSITION_CONTEXTS = 8


@torch.no_grad()
def positions_chart(data: BrowserData, latent: int) -> str:
    """The latent's activation at each offset from the maximum, one line per top context."""
    contexts = data.top_contexts(latent)[:POSITION_CONTEXTS]
    if not contexts:
        return '<p class="note">It never fired.</p>'
    before = max(c.max_index for c in contexts)
    after = max(len(c.values) - c.max_index for c in contexts)
    series = []
    for c in contexts:
        pad = before - c.max_index
        values = [math.nan] * pad + c.values
        series.append(values + [math.nan] * (before + after - len(values)))
    return svg_line_chart(
        series,
        x=list(range(-before, after)),
        xlabel="position relative to the maximum",
        ylabel="activation",
        title="activation across positions",
        marker_x=0.0,
        labels=[f"context {c.context}, max {c.max_value:.3g}" for c in contexts],
    )


def temporal_panels(sae: Any, data: BrowserData) -> list[Panel]:
    """The panels (see the module docstring)."""
    acf = lag1_autocorrelation(data)
    tokens = data.sample.n_rows
    panels = []
    for row, latent in enumerate(data.latents):
        value = float(acf[row])
        text = (
            f"lag-1 autocorrelation <b>{value:.3f}</b>"
            if math.isfinite(value)
            else "lag-1 autocorrelation <b>n/a</b> (no variation)"
        )
        note = f'<p class="note">{text} on {tokens:,} tokens of whole contexts</p>'
        panels.append(Panel("Across positions", positions_chart(data, latent) + note, latent))
    finite = acf[acf.isfinite()]
    if finite.numel():
        counts = torch.histc(finite.float(), bins=20, min=-1.0, max=1.0)
        chart = svg_bar_chart(
            counts.tolist(),
            [-1.0 + 0.1 * i for i in range(21)],
            xlabel="lag-1 autocorrelation",
            ylabel="latents",
            title="lag-1 autocorrelation of the browsed latents",
        )
        note = (
            f'<p class="note">Mean {float(finite.mean()):.3f} over {finite.numel():,} latents '
            f"that vary on {tokens:,} tokens ({html.escape(data.hook_name)}); "
            "near 1: a latent stays on across positions.</p>"
        )
        panels.append(Panel("Lag-1 autocorrelation", chart + note))
    return panels
