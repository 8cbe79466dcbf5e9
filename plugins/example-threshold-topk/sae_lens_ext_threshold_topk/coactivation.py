"""``decoder_coactivation``: a loss term for any training SAE.

Latents that fire together while their decoder directions overlap are two halves of one
feature, or a feature and its absorber. The penalty, over the ``coactivation_latents``
latents most active in the batch (one option, so its cost stays ``O(m^2 d_in)``)::

    C[i, j] = mean_rows(a_i * a_j)              # co-activation
    G[i, j] = cos(W_dec[i], W_dec[j])           # decoder overlap
    loss    = mean_{i != j} C[i, j] * G[i, j]^2
"""

from __future__ import annotations

import torch

from sae_lens_ext.api import LossContext


def decoder_coactivation(ctx: LossContext) -> torch.Tensor:
    """The unweighted penalty (the SAE multiplies it by the coefficient the user gives)."""
    m = int(ctx.option("coactivation_latents", 256))
    acts = ctx.feature_acts.reshape(-1, ctx.feature_acts.shape[-1])
    top = acts.detach().abs().sum(0).topk(min(m, acts.shape[-1])).indices
    a, W = acts[:, top], ctx.sae.W_dec[top]
    co = (a.T @ a) / a.shape[0]
    unit = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    overlap = (unit @ unit.T).pow(2)
    n = top.numel()
    off_diagonal = (co * overlap).sum() - (co.diagonal() * overlap.diagonal()).sum()
    loss = off_diagonal / max(n * (n - 1), 1)
    ctx.metrics["coactivation_latents_used"] = n  # logged with the step's metrics
    return loss
