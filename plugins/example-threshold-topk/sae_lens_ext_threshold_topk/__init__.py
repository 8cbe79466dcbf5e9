"""The plugin's entry point (``[project.entry-points.sae_lens_ext]``): hooks only.

It is imported when ``sae_lens`` is imported and when ``sae-lens`` starts, so it stays
light: torch, sae_lens and the plugin's own modules are imported inside the hooks.
"""

from sae_lens_ext.api import hookimpl


@hookimpl
def register_architectures(register):
    from sae_lens_ext.api import Architecture
    from sae_lens_ext_threshold_topk.sae import (
        ARCHITECTURE,
        ThresholdTopKSAE,
        ThresholdTopKSAEConfig,
        ThresholdTopKTrainingSAE,
        ThresholdTopKTrainingSAEConfig,
    )

    register(
        Architecture(
            ARCHITECTURE,
            ThresholdTopKSAE,
            ThresholdTopKSAEConfig,
            ThresholdTopKTrainingSAE,
            ThresholdTopKTrainingSAEConfig,
            description="TopK SAE with a learned per-latent threshold",
        )
    )


@hookimpl
def register_loss_terms(register):
    from sae_lens_ext.api import LossTerm
    from sae_lens_ext_threshold_topk.coactivation import decoder_coactivation

    register(
        LossTerm(
            "decoder_coactivation",
            decoder_coactivation,
            "co-activation of latents weighted by their decoder overlap (cos^2)",
            options=("coactivation_latents",),
        )
    )


@hookimpl
def resample_dead_latents(request):
    from sae_lens_ext_threshold_topk.resample import resample_threshold_topk

    return resample_threshold_topk(request)


@hookimpl
def evaluation_metrics(sae, data):
    from sae_lens_ext_threshold_topk.report import is_threshold_topk, slot_use

    return slot_use(sae, data) if is_threshold_topk(sae) else None


@hookimpl
def run_figures(sae, data, folder):
    from sae_lens_ext_threshold_topk.report import is_threshold_topk, threshold_histogram

    return threshold_histogram(sae, folder) if is_threshold_topk(sae) else None
