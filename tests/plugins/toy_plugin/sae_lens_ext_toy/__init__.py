"""A third-party plugin used by the tests: a whole architecture and a resampler."""

from sae_lens_ext.api import hookimpl

RESAMPLER = "toy_unit_rows"


@hookimpl
def register_architectures(register):
    from sae_lens_ext.api import Architecture
    from sae_lens_ext_toy.sae import (
        ToyReluSAE,
        ToyReluSAEConfig,
        ToyReluTrainingSAE,
        ToyReluTrainingSAEConfig,
    )

    register(
        Architecture(
            "toy_relu",
            ToyReluSAE,
            ToyReluSAEConfig,
            ToyReluTrainingSAE,
            ToyReluTrainingSAEConfig,
            description="test-only ReLU SAE",
        )
    )


@hookimpl
def resample_dead_latents(request):
    """Give every dead latent the first basis vector, scaled to 3: easy to spot in tests."""
    import torch

    from sae_lens_ext.api import ResampleResult

    n, d_in = request.dead_latents.numel(), request.sae.cfg.d_in
    row = torch.zeros(d_in)
    row[0] = 3.0
    return ResampleResult(
        values={"W_dec": row.repeat(n, 1), "W_enc": row.repeat(n, 1).T.contiguous()},
        resampler=RESAMPLER,
    )
