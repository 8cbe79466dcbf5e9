"""tsae's panels in ``sae-lens browse`` (tsae SAEs only): which Matryoshka group a latent
is in, and, beside the index, each group's lag-1 autocorrelation. The first group is the
high-level one, the only one the temporal contrastive term trained: its latents should
stay on across positions more than the others'.
"""

from __future__ import annotations

import bisect
from typing import Any

from sae_lens_ext.api import BrowserData, Panel, lag1_autocorrelation


def group_edges(sae: Any) -> list[int]:
    """``[0, w_0, w_1, ..., d_sae]``: group ``g`` is latents ``edges[g]..edges[g+1]-1``."""
    widths = list(sae.cfg.matryoshka_widths) or [sae.cfg.d_sae]
    return [0, *widths]


def group_panels(sae: Any, data: BrowserData) -> list[Panel]:
    """A note on each latent's card and a table of the groups beside the index."""
    edges = group_edges(sae)
    n_groups = len(edges) - 1
    acf = lag1_autocorrelation(data)
    panels: list[Panel] = []
    members: list[list[int]] = [[] for _ in range(n_groups)]
    for row, latent in enumerate(data.latents):
        g = bisect.bisect_right(edges, latent) - 1
        members[g].append(row)
        role = (
            "the high-level group, the only one the temporal contrastive term trained"
            if g == 0
            else "a low-level group (reconstruction only)"
        )
        text = (
            f"Group {g + 1} of {n_groups} (latents {edges[g]:,} to {edges[g + 1] - 1:,}): {role}."
        )
        panels.append(Panel("Matryoshka group", f'<p class="note">{text}</p>', latent))
    rows = []
    for g, group in enumerate(members):
        values = acf[group]
        values = values[values.isfinite()]
        mean = f"{float(values.mean()):.3f}" if values.numel() else "n/a"
        rows.append(
            f"<tr><td>{g + 1}</td><td>{edges[g]:,} to {edges[g + 1] - 1:,}</td>"
            f"<td>{len(group):,}</td><td>{mean}</td></tr>"
        )
    table = (
        '<table class="logits"><tr><td>group</td><td>latents</td><td>browsed</td>'
        f"<td>lag-1 autocorr.</td></tr>{''.join(rows)}</table>"
    )
    note = '<p class="note">Mean lag-1 autocorrelation of the browsed latents of each group.</p>'
    panels.append(Panel("Matryoshka groups (tsae)", table + note))
    return panels
