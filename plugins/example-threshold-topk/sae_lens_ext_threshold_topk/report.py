"""A metric and a figure for ``threshold_topk`` SAEs in ``sae-lens demo`` / ``evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae_lens_ext.api import EvalData, Metric, encode_batches, pyplot, save_figure


def is_threshold_topk(sae: Any) -> bool:
    return bool(sae.cfg.architecture() == "threshold_topk")


@torch.no_grad()
def slot_use(sae: Any, data: EvalData) -> list[Metric]:
    """How many of the ``k`` slots the thresholds leave filled, on average."""
    active, rows = 0.0, 0
    for _, codes in encode_batches(sae, data):
        active += float((codes != 0).sum())
        rows += codes.shape[0]
    used = active / max(rows, 1) / sae.cfg.k
    return [Metric("topk_slots_used", used, "share of the k slots in use (thresholds)")]


def threshold_histogram(sae: Any, folder: Path) -> list[Path]:
    """``thresholds.png``: the learned thresholds' distribution."""
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    ax.hist(sae.threshold.detach().float().cpu().numpy(), bins=40)
    ax.set_xlabel("threshold (pre-activation units)")
    ax.set_ylabel("latents")
    ax.set_title(f"Learned thresholds of {sae.cfg.d_sae} latents (k = {sae.cfg.k})")
    return [save_figure(fig, folder / "thresholds.png")]
