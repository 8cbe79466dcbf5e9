"""Default resampler: re-initialise dead latents from the inputs the SAE reconstructs worst.

Follows Anthropic's "Towards Monosemanticity" recipe: sample inputs with
probability proportional to their squared reconstruction error; each dead
latent gets the (b_dec-centred) input direction as its decoder row, scaled to
the mean norm of the alive decoder rows, the same direction scaled to 0.2 x
the mean alive encoder norm as its encoder column, and a zero encoder bias.
It is registered ``trylast`` so that any other resampler plugin wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sae_lens_ext.api import hookimpl

if TYPE_CHECKING:
    from sae_lens_ext.api import ResampleRequest, ResampleResult

NAME = "worst_reconstructed"


@hookimpl(trylast=True)
def resample_dead_latents(request: ResampleRequest) -> ResampleResult | None:
    import torch

    from sae_lens_ext.api import ResampleResult

    sae, dead = request.sae, request.dead_latents
    x = request.sae_in.float().reshape(-1, request.sae_in.shape[-1])
    err = (x - request.sae_out.float().reshape(x.shape)).pow(2).sum(-1)
    if not torch.isfinite(err).all() or err.sum() <= 0:
        return None
    n = dead.numel()
    picks = torch.multinomial(err.pow(2) + 1e-12, n, replacement=n > x.shape[0])
    centred = x[picks] - sae.b_dec.detach().float()
    directions = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    alive = torch.ones(sae.cfg.d_sae, dtype=torch.bool, device=dead.device)
    alive[dead] = False
    W_dec, W_enc = sae.W_dec.detach().float(), sae.W_enc.detach().float()
    if alive.any():
        dec_norm = W_dec[alive].norm(dim=-1).mean()
        enc_norm = W_enc[:, alive].norm(dim=0).mean()
    else:
        dec_norm = enc_norm = torch.tensor(1.0, device=x.device)
    values = {
        "W_dec": directions * dec_norm,
        "W_enc": (directions * enc_norm * 0.2).T.contiguous(),
    }
    if hasattr(sae, "b_enc"):
        values["b_enc"] = torch.zeros(n, device=x.device)
    return ResampleResult(values=values, resampler=NAME, info={"picked_inputs": picks})
