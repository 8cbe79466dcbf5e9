"""Temporal SAE (``tsae``, Bhalla et al., ICLR 2026): plugin entry point.

A Matryoshka BatchTopK SAE trained on pairs of adjacent positions with a symmetric
contrastive term on its first (high-level) group, as the reference code does it
(see :mod:`.sae`). Not upstream's ``temporal`` architecture (attention over context), and
not this project's ``temporal_contrastive`` loss term (a different, window-based InfoNCE).
This module stays light: torch and sae_lens are imported inside the hook only.
"""

from sae_lens_ext.api import hookimpl


@hookimpl
def register_architectures(register):
    from sae_lens_ext.api import Architecture
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
    persist over positions), as pairs of adjacent positions. Measured on these data (d_sae
    512, 800,000 samples; docs/tsae.md#the-demo): the reference's lr 3e-4 and auxiliary
    coefficient 1/32 leave 372 of 512 latents dead (MCC 0.42); the demo's lr, ``k`` near the
    data's true L0 (14.7) and a full-weight auxiliary loss leave about 3 (MCC about 0.52)."""
    from sae_lens_ext_plugins.tsae.sae import ARCHITECTURE

    if architecture != ARCHITECTURE:
        return None
    from sae_lens_ext.api import DemoSetup, SequenceDemoData

    return DemoSetup(
        sae_settings={"k": 15, "aux_loss_coefficient": 1.0},
        samples=800_000,
        data=SequenceDemoData.create,
        note=(
            "Note: a BatchTopK SAE (the base of tsae) recovers far fewer of these superposed "
            "features than the L1 SAEs of the other demos (ground-truth MCC about 0.5 here, "
            "temporal_consistency about 0.94, chance about 0.39); the same SAE without its "
            "temporal term and Matryoshka groups reaches about 0.6, so the base is the limit, "
            "not the temporal term. See docs/tsae.md#the-demo."
        ),
    )


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
