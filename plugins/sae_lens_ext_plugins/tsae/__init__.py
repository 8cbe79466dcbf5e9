"""Temporal SAE (``tsae``, Bhalla et al., ICLR 2026): plugin entry point.

A Matryoshka BatchTopK SAE trained on pairs of adjacent positions with a symmetric
contrastive term on its first (high-level) group, as the reference code does it
(see :mod:`.sae`). Not upstream's ``temporal`` architecture (attention over context), and
not this project's ``temporal_contrastive`` loss term (a different, window-based InfoNCE).
This module stays light: torch and sae_lens are imported inside the hook only.
"""

from sae_lens_ext import hookimpl


@hookimpl
def register_architectures(register):
    from sae_lens_ext.architectures import Architecture
    from sae_lens_ext_plugins.tsae.sae import (
        ARCHITECTURE,
        TSAE,
        TSAEConfig,
        TSAETrainingSAE,
        TSAETrainingSAEConfig,
    )

    register(
        Architecture(
            name=ARCHITECTURE,
            sae_class=TSAE,
            sae_config_class=TSAEConfig,
            training_class=TSAETrainingSAE,
            training_config_class=TSAETrainingSAEConfig,
            description="Temporal SAE (Bhalla et al. 2026): Matryoshka BatchTopK on pairs of "
            "adjacent positions, symmetric contrastive term on the first group",
        )
    )


@hookimpl
def demo_setup(architecture):
    """The demo trains ``tsae`` on the temporal plugin's synthetic sequences (features that
    persist over positions), as pairs of adjacent positions."""
    from sae_lens_ext_plugins.tsae.sae import ARCHITECTURE

    if architecture != ARCHITECTURE:
        return None
    from sae_lens_ext.synthetic import DemoSetup
    from sae_lens_ext_plugins.temporal_consistency.demo import SequenceDemoData

    return DemoSetup(samples=800_000, lr=3e-4, data=SequenceDemoData.create)


@hookimpl
def browser_panels(sae, data):
    """For tsae SAEs: each latent's Matryoshka group, and each group's lag-1
    autocorrelation beside the index (the across-positions panel of any SAE is the
    temporal_consistency plugin's)."""
    from sae_lens_ext_plugins.tsae.sae import ARCHITECTURE

    if sae.cfg.architecture() != ARCHITECTURE:
        return None
    from sae_lens_ext_plugins.tsae.browse import group_panels

    return group_panels(sae, data)
