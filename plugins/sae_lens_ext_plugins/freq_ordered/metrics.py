"""Metrics that work on any SAE-Lens SAE: measured firing frequencies (the core's
:func:`sae_lens_ext.api.firing_frequencies`, as ``measure_frequencies``),
Spearman(index, frequency), prefix explained variance and seed-to-seed decoder
consistency."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sae_lens_ext.api import firing_frequencies as measure_frequencies

__all__ = [
    "DecoderConsistency",
    "decoder_consistency",
    "measure_frequencies",
    "ordering_spearman",
    "prefix_explained_variance",
]

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def _batches(sae: Any, activations: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Row batches of ``activations`` flattened to ``(N, d_in)``, a whole number of the
    SAE's batch windows each (window architectures see consecutive positions); sequences
    ``(n_seq, seq_len, d_in)`` are served whole, a whole number of them per batch (context
    architectures see every position of a sequence)."""
    from sae_lens_ext.api import batch_rows_for

    if activations.dim() == 3:
        per = max(1, batch_size // max(1, activations.shape[1]))
        for start in range(0, activations.shape[0], per):
            yield activations[start : start + per]
        return
    x = activations.reshape(-1, activations.shape[-1])
    batch_size = batch_rows_for(sae, batch_size)
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


def ordering_spearman(frequencies: torch.Tensor | Sequence[float]) -> float:
    """Spearman rank correlation between latent index and frequency (ties get average
    ranks). -1: frequency strictly decreasing in index. NaN if all frequencies are equal."""
    f = torch.as_tensor(frequencies, dtype=torch.float64).flatten()
    if f.numel() < 2:
        return math.nan
    rank_f = _average_ranks(f)
    rank_i = torch.arange(f.numel(), dtype=torch.float64, device=f.device)
    rank_f, rank_i = rank_f - rank_f.mean(), rank_i - rank_i.mean()
    denom = rank_f.norm() * rank_i.norm()
    return float((rank_f @ rank_i) / denom) if denom > 0 else math.nan


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(values, stable=True)
    sorted_v = values[order]
    ranks = torch.empty_like(values)
    i, n = 0, values.numel()
    # ties: one pass over runs of equal values
    boundaries = [*torch.nonzero(sorted_v[1:] != sorted_v[:-1]).flatten().tolist(), n - 1]
    for end in boundaries:
        ranks[order[i : end + 1]] = (i + end) / 2.0
        i = end + 1
    return ranks


@torch.no_grad()
def prefix_explained_variance(
    sae: Any,
    activations: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    batch_size: int = 4096,
) -> dict[float, float]:
    """Explained variance ``1 - E||x - x_hat_k||^2 / Var(x)`` when only the first
    ``k = round(fraction * d_sae)`` latents are kept (the others zeroed before decoding).
    ``activations``: rows ``(N, d_in)`` or sequences ``(n_seq, seq_len, d_in)``.

    Computed with SAE-Lens's ``ExplainedVarianceCalculator`` (the package's one
    definition); fraction 1.0 is the SAE's ordinary EV.
    """
    from sae_lens.evals import ExplainedVarianceCalculator

    d_sae = sae.cfg.d_sae
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"fractions: each must be in [0, 1], got {f}")
    ks = {f: max(0, min(d_sae, round(f * d_sae))) for f in fractions}
    calcs = {f: ExplainedVarianceCalculator() for f in fractions}
    was_training = sae.training
    sae.eval()
    try:
        for batch in _batches(sae, activations, batch_size):
            acts, x = sae.encode(batch), batch.reshape(-1, batch.shape[-1]).float()
            for f, k in ks.items():
                kept = acts.clone()
                kept[..., k:] = 0
                calcs[f].add_batch(sae.decode(kept).reshape(x.shape).float(), x)
    finally:
        sae.train(was_training)
    if not calcs or calcs[fractions[0]].num_samples == 0:
        raise ValueError("prefix_explained_variance: activations is empty")
    return {f: calc.compute() for f, calc in calcs.items()}


@dataclass(frozen=True)
class DecoderConsistency:
    """How alike two SAEs' dictionaries are after the best one-to-one matching of latents."""

    mean_cosine: float  # mean cosine of matched decoder rows
    share_above: float  # share of matched pairs with cosine > threshold
    threshold: float
    matched: int  # min(d_sae_a, d_sae_b)


def decoder_consistency(sae_a: Any, sae_b: Any, threshold: float = 0.9) -> DecoderConsistency:
    """Match ``sae_a``'s latents to ``sae_b``'s one to one by the cosine similarity of their
    decoder rows and report the mean matched cosine and the share of matched pairs above
    ``threshold``: :func:`sae_lens_ext.metrics.seed_consistency` (Hungarian algorithm,
    signed cosine, every latent counted; the smaller dictionary matched in full) as a
    :class:`DecoderConsistency`.
    """
    from sae_lens_ext.api import seed_consistency

    result = seed_consistency(sae_a, sae_b, threshold=threshold)
    return DecoderConsistency(
        mean_cosine=result["mean_matched_cosine"],
        share_above=result["share_above"],
        threshold=threshold,
        matched=result["matched"],
    )
