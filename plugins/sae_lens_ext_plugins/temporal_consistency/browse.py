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

from sae_lens_ext.api import BrowserData, Panel, svg_bar_chart, svg_line_chart
from sae_lens_ext_plugins.temporal_consistency.metrics import ALIVE_VAR_EPS

#: Top contexts drawn per latent.
POSITION_CONTEXTS = 8


@torch.no_grad()
def lag1_autocorrelation(data: BrowserData, latents: list[int] | None = None) -> torch.Tensor:
    """``(n,)`` lag-1 autocorrelation of ``latents`` (default: the browsed ones) on the
    sample, NaN for a latent that does not vary there. Streaming float64 moments: memory
    one batch of contexts."""
    n = len(data.latents if latents is None else latents)
    s1, s2, sa, sb, s12 = (torch.zeros(n, dtype=torch.float64) for _ in range(5))
    rows = pairs = 0
    for acts in data.sample_latents(latents):
        x = acts.double()
        s1 += x.sum((0, 1))
        s2 += x.pow(2).sum((0, 1))
        sa += x[:, :-1].sum((0, 1))
        sb += x[:, 1:].sum((0, 1))
        s12 += (x[:, :-1] * x[:, 1:]).sum((0, 1))
        rows += x.shape[0] * x.shape[1]
        pairs += x.shape[0] * (x.shape[1] - 1)
    if pairs == 0:
        return torch.full((n,), math.nan, dtype=torch.float64)
    mean = s1 / rows
    var = s2 / rows - mean**2
    cov = (s12 - mean * (sa + sb)) / pairs + mean**2
    return torch.where(var > ALIVE_VAR_EPS, cov / var.clamp_min(ALIVE_VAR_EPS), math.nan)


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
