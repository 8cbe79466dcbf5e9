"""The frequency-ordered SAE plugin (``freq_ordered``).

This module is the entry point: it must stay light (no torch / sae_lens import
at module level). Heavy code lives in ``sae``, ``losses``, ``prefix``,
``metrics``, ``reorder`` and ``plots``.
"""

from sae_lens_ext import hookimpl


@hookimpl
def register_architectures(register):
    from sae_lens_ext.architectures import Architecture
    from sae_lens_ext_plugins.freq_ordered.sae import (
        ARCHITECTURE,
        FreqOrderedSAE,
        FreqOrderedSAEConfig,
        FreqOrderedTrainingSAE,
        FreqOrderedTrainingSAEConfig,
    )

    register(
        Architecture(
            ARCHITECTURE,
            FreqOrderedSAE,
            FreqOrderedSAEConfig,
            FreqOrderedTrainingSAE,
            FreqOrderedTrainingSAEConfig,
            description="ReLU SAE whose latents are ordered by firing frequency",
        )
    )


@hookimpl
def register_loss_terms(register):
    from sae_lens_ext.loss_terms import LossTerm
    from sae_lens_ext_plugins.freq_ordered.losses import adaptive_l1_loss, frequency_ordering_loss
    from sae_lens_ext_plugins.freq_ordered.prefix import (
        PREFIX_OPTIONS,
        PREFIX_TERM,
        prefix_reconstruction_loss,
    )

    register(
        LossTerm(
            "frequency_ordering",
            frequency_ordering_loss,
            "rearrangement gap: lower-indexed latents should fire more often",
            options=("frequency_temperature", "ordering_rows"),
        )
    )
    register(
        LossTerm(
            "adaptive_l1",
            adaptive_l1_loss,
            "L1 on acts * decoder norms, scaled by reconstruction cosine similarity",
        )
    )
    register(
        LossTerm(
            PREFIX_TERM,
            prefix_reconstruction_loss,
            "mean reconstruction loss of random prefixes (first k latents) of the latent order",
            options=PREFIX_OPTIONS,
        )
    )
