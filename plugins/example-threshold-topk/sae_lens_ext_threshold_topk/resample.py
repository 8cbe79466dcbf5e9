"""A resampler for ``threshold_topk`` SAEs (other SAEs are left to other resamplers)."""

from __future__ import annotations

import torch

from sae_lens_ext.api import ResampleRequest, ResampleResult

NAME = "threshold_topk"


def resample_threshold_topk(request: ResampleRequest) -> ResampleResult | None:
    """Each dead latent takes the direction of one of the inputs reconstructed worst
    (sampled by squared error): unit decoder row, encoder column of the alive latents'
    mean norm, zero bias and zero threshold, so that it can fire at once."""
    from sae_lens_ext_threshold_topk.sae import ThresholdTopKTrainingSAE

    sae = request.sae
    if not isinstance(sae, ThresholdTopKTrainingSAE):
        return None  # not ours: the next resampler decides
    x = request.sae_in.float().reshape(-1, sae.cfg.d_in)
    error = (x - request.sae_out.float().reshape(x.shape)).pow(2).sum(-1)
    if not bool(error.sum() > 0):
        return None
    n = request.dead_latents.numel()
    picks = torch.multinomial(error, n, replacement=n > x.shape[0])
    directions = x[picks] - sae.b_dec.detach().float()
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    encoder_norm = sae.W_enc.detach().float().norm(dim=0).mean()
    zeros = torch.zeros(n)
    return ResampleResult(
        values={
            "W_dec": directions,
            "W_enc": (directions * encoder_norm).T.contiguous(),
            "b_enc": zeros,
            "threshold": zeros,
        },
        resampler=NAME,
    )
