"""Loss terms of ``freq_ordered``: the frequency-ordering loss and the adaptive L1.

Both are registered as plugin loss terms, so any architecture built on
``LossTermTrainingSAE`` can switch them on with ``loss_terms="frequency_ordering=0.3@1000"``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from sae_lens_ext.api import LossContext, decoder_weighted_sparsity


@runtime_checkable
class HasFrequencyLever(Protocol):
    """An SAE with a per-latent bias added last before its activation."""

    def frequency_lever(self) -> torch.Tensor: ...


def rearrangement_gap(p: torch.Tensor) -> torch.Tensor:
    """``(sum_i w_i p_i - sum_i w_i sort_desc(p)_i) / sum_i p_i`` with ``w_i = i / (d - 1)``.

    By the rearrangement inequality it is >= 0, and 0 exactly when ``p`` is
    non-increasing in the index. Its gradient in ``p_i`` is
    ``(w_i - w_rank(i) - L) / sum(p)``: a latent that fires more often than its
    index warrants (rank before index) is pushed to fire less, and vice versa.
    """
    d = p.numel()
    w = torch.arange(d, device=p.device, dtype=p.dtype) / max(d - 1, 1)
    sorted_p = torch.sort(p, descending=True).values
    return ((w * p).sum() - (w * sorted_p).sum()) / p.sum().clamp_min(1e-8)


def straight_through_frequency(
    hidden_pre: torch.Tensor,
    hard: torch.Tensor | None,
    temperature: float,
    rows: int = 0,
    lever: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-latent firing rate whose value is ``hard`` (default: this batch's
    ``mean(hidden_pre > 0)``) and whose gradient is that of the soft rate
    ``mean(sigmoid(hidden_pre / temperature))`` over ``rows`` evenly strided rows
    (0: all rows).

    With ``lever`` (a ``[d_sae]`` bias added last before the activation), the soft
    rate is computed from ``hidden_pre.detach() + (lever - lever.detach())``: same
    value and same gradient with respect to the bias, but the gradient stops there,
    so the term adds no ``N x d_sae`` backward pass.
    """
    h = hidden_pre.reshape(-1, hidden_pre.shape[-1])
    if hard is None:
        hard = (h.detach() > 0).float().mean(0)
    if rows and h.shape[0] > rows:
        h = h[:: -(-h.shape[0] // rows)]
    h = h.float()
    if lever is not None:
        h = h.detach() + (lever.float() - lever.detach().float())
    soft = torch.sigmoid(h / temperature).mean(0)
    return hard.detach().float() + (soft - soft.detach())


def bias_routed_gap(
    hidden_pre: torch.Tensor, hard: torch.Tensor, temperature: float, rows: int, lever: torch.Tensor
) -> torch.Tensor:
    """``rearrangement_gap(straight_through_frequency(..., lever=lever))`` with the same
    value and the same gradient (into ``lever`` only), computed in closed form without
    recording autograd ops: ``dL/dp_i = (w_i - w_rank(i) - L) / sum(p)``, times the soft
    rate's derivative ``mean_rows(sigmoid'(h_i / T)) / T``. Fewer ops per step."""
    with torch.no_grad():
        p = hard.float()
        d = p.numel()
        w = torch.arange(d, device=p.device, dtype=p.dtype) / max(d - 1, 1)
        rank_w = torch.empty_like(w)
        rank_w[torch.sort(p, descending=True).indices] = w
        total = p.sum().clamp_min(1e-8)
        gap = ((w - rank_w) * p).sum() / total
        h = hidden_pre.reshape(-1, d)
        if rows and h.shape[0] > rows:
            h = h[:: -(-h.shape[0] // rows)]
        s = torch.sigmoid(h.float() / temperature)
        slope = (s * (1 - s)).mean(0) / temperature
        c = ((w - rank_w - gap) / total * slope).to(lever.dtype)
    return gap + (lever * c).sum() - (lever.detach() * c).sum()


def frequency_ordering_loss(ctx: LossContext) -> torch.Tensor:
    """Rearrangement gap of the straight-through frequency estimate.

    Value: the SAE's EMA buffer ``latent_frequency`` if it has one (hard firing
    rates over many batches), else this batch's hard rates. Gradient: the soft
    rate of this batch (see :func:`straight_through_frequency`), into the SAE's
    ``frequency_lever()`` bias if it has one, else into the whole encoder.
    """
    sae = ctx.sae
    # an SAE with the buffer updates it before its loss terms run (base_aux_loss)
    hard = getattr(sae, "latent_frequency", None)
    temperature = float(ctx.option("frequency_temperature", 0.1))
    rows = int(ctx.option("ordering_rows", 0))
    lever = sae.frequency_lever() if isinstance(sae, HasFrequencyLever) else None
    if lever is not None and hard is not None:
        loss = bias_routed_gap(ctx.hidden_pre, hard, temperature, rows, lever)
    else:
        p = straight_through_frequency(ctx.hidden_pre, hard, temperature, rows, lever)
        loss = rearrangement_gap(p)
    ctx.metrics["frequency_ordering_gap"] = loss.detach()
    return loss


def adaptive_l1_loss(ctx: LossContext) -> torch.Tensor:
    """L1 penalty scaled by reconstruction quality (log run 5).

    The scale is the batch mean cosine similarity between the ``b_dec``-centred
    input and reconstruction, clamped to [0, 1] and detached: while the SAE
    reconstructs poorly the sparsity pressure is relaxed, and it reaches the
    full coefficient as reconstruction becomes good.
    """
    sae = ctx.sae
    b_dec = sae.b_dec.detach().float()
    x = ctx.step_input.sae_in.float().reshape(-1, b_dec.shape[0]) - b_dec
    x_hat = ctx.sae_out.detach().float().reshape(x.shape) - b_dec
    quality = F.cosine_similarity(x_hat, x, dim=-1).mean()
    # data-parallel: the global batch's mean (processes hold equal blocks); else itself
    quality = ctx.batch_mean(quality).clamp(0.0, 1.0)
    ctx.metrics["adaptive_l1_scale"] = quality
    return quality * decoder_weighted_sparsity(sae, ctx.feature_acts)
