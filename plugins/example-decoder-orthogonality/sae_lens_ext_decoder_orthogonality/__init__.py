"""Example third-party plugin: penalise overlap between decoder directions.

    loss = mean over pairs i != j of (cos(W_dec[i], W_dec[j]))^2

computed on a random subset of ``decoder_orthogonality_sample`` latents per
step (default 1024, set with ``loss_term_options``) so that its cost stays
O(k^2 d_in) however large the dictionary. Enable it on any training SAE, SAE-Lens's
own architectures included, with ``loss_terms="decoder_orthogonality=0.01"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sae_lens_ext.api import hookimpl

if TYPE_CHECKING:
    import torch

    from sae_lens_ext.api import LossContext, LossTerm


def decoder_orthogonality(ctx: LossContext) -> torch.Tensor:
    import torch  # heavy imports inside functions: this module loads at start-up

    W: torch.Tensor = ctx.sae.W_dec
    k = int(ctx.option("decoder_orthogonality_sample", 1024))
    if W.shape[0] > k:
        W = W[torch.randperm(W.shape[0], device=W.device)[:k]]
    unit = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    gram = unit @ unit.T
    n = gram.shape[0]
    off_diagonal = gram.pow(2).sum() - gram.diagonal().pow(2).sum()
    return off_diagonal / max(n * (n - 1), 1)


@hookimpl
def register_loss_terms(register: Callable[[LossTerm], None]) -> None:
    from sae_lens_ext.api import LossTerm

    register(
        LossTerm(
            name="decoder_orthogonality",
            fn=decoder_orthogonality,
            description="mean squared cosine similarity between decoder rows",
            options=("decoder_orthogonality_sample",),
        )
    )
