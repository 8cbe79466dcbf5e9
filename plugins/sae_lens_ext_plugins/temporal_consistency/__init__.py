"""Temporal-consistency SAE (``temporal_consistency``): plugin entry point.

Registers the architecture and two loss terms:

- ``temporal_consistency``: penalises the change of the latent vector between
  positions ``t`` and ``t + temporal_stride`` inside windows of
  ``temporal_window`` consecutive rows (see :mod:`.losses`);
- ``temporal_contrastive``: a window InfoNCE (cosine / temperature, one direction)
  on the first latents; *not* the T-SAE loss of Bhalla et al. (that is the ``tsae``
  architecture, :mod:`sae_lens_ext_plugins.tsae`).

Both terms can be stacked on any plugin training SAE (e.g. ``freq_ordered``)
with ``loss_terms="temporal_consistency=0.1"`` and
``loss_term_options="temporal_window=4"``. This module stays light: torch and
sae_lens are imported inside the hooks only.
"""

from sae_lens_ext.api import hookimpl

ARCHITECTURE = "temporal_consistency"


@hookimpl
def register_architectures(register):
    from sae_lens_ext.api import Architecture
    from sae_lens_ext_plugins.temporal_consistency.sae import (
        TemporalConsistencySAE,
        TemporalConsistencySAEConfig,
        TemporalConsistencyTrainingSAE,
        TemporalConsistencyTrainingSAEConfig,
    )

    register(
        Architecture(
            name=ARCHITECTURE,
            sae_class=TemporalConsistencySAE,
            sae_config_class=TemporalConsistencySAEConfig,
            training_class=TemporalConsistencyTrainingSAE,
            training_config_class=TemporalConsistencyTrainingSAEConfig,
            description="per-token ReLU/GELU SAE trained with a temporal consistency loss "
            "over windows of consecutive positions",
        )
    )


@hookimpl
def register_loss_terms(register):
    from sae_lens_ext.api import LossTerm
    from sae_lens_ext_plugins.temporal_consistency.losses import (
        temporal_batch_window,
        temporal_consistency_loss,
        temporal_contrastive_loss,
    )

    register(
        LossTerm(
            name="temporal_consistency",
            fn=temporal_consistency_loss,
            description="decoder-weighted total variation of each latent between positions "
            "t and t+stride inside windows of temporal_window consecutive rows "
            "(temporal_loss_form=normalized: normalised squared change)",
            options=("temporal_window", "temporal_stride", "temporal_loss_form"),
            sparse_aware=True,
            batch_window=temporal_batch_window,
        )
    )
    register(
        LossTerm(
            name="temporal_contrastive",
            fn=temporal_contrastive_loss,
            description="window InfoNCE: cosine/temperature between the first latents at t "
            "and t-1 of one window against the same offset of other windows (not Bhalla et "
            "al.'s T-SAE loss: see the tsae architecture)",
            options=(
                "temporal_window",
                "temporal_stride",
                "temporal_contrastive_fraction",
                "temporal_contrastive_temperature",
            ),
            batch_window=temporal_batch_window,
        )
    )


#: The best setting found on the benchmark's hard regime (docs/benchmarks-temporal.md): the
#: window InfoNCE at coefficient 1 on all latents, the consistency term off.
CONTRASTIVE = {
    "temporal_coefficient": 0.0,
    "temporal_contrastive_coefficient": 1.0,
    "temporal_contrastive_fraction": 1.0,
}


@hookimpl
def register_presets(register):
    from sae_lens_ext.api import Preset

    register(
        Preset(
            "contrastive",
            ARCHITECTURE,
            CONTRASTIVE,
            "temporal_contrastive at coefficient 1 on all latents, temporal_consistency off: "
            "for features in heavy superposition that persist over positions",
            "benchmark (2026-12-06), hard regime: autocorrelation error 0.2467 (standard "
            "0.3342, the defaults 0.3041), MCC 0.752, explained variance 0.667 (standard "
            "0.668); easy regime: within seed noise of standard (docs/benchmarks-temporal.md)",
        )
    )


@hookimpl
def demo_setup(architecture):
    """The demo trains ``temporal_consistency`` on synthetic sequences whose features
    persist over positions (measured settings: docs/temporal-consistency.md)."""
    if architecture != ARCHITECTURE:
        return None
    from sae_lens_ext.api import DemoSetup, SequenceDemoData

    return DemoSetup(
        sae_settings={"l1_coefficient": 0.8, "temporal_coefficient": 0.1, "temporal_window": 4},
        samples=800_000,
        data=SequenceDemoData.create,
    )


@hookimpl
def evaluation_metrics(sae, data):
    """Consistency of any SAE on sequences: mean lag-1 autocorrelation of its latents,
    redundant latent pairs and, with ground truth, the autocorrelation error of the latents
    matched to the true features."""
    if not data.is_sequences:
        return None
    from sae_lens_ext_plugins.temporal_consistency.metrics import sequence_metrics

    return sequence_metrics(sae, data)


@hookimpl
def browser_panels(sae, data):
    """For any SAE in ``sae-lens browse``: each latent's activation across the positions of
    its top contexts and its lag-1 autocorrelation; their distribution beside the index."""
    from sae_lens_ext_plugins.temporal_consistency.browse import temporal_panels

    return temporal_panels(sae, data)
