"""The frequency-ordered SAE plugin (``freq_ordered``).

This module is the entry point: it must stay light (no torch / sae_lens import
at module level). Heavy code lives in ``sae``, ``losses``, ``prefix``,
``metrics``, ``reorder`` and ``plots``.
"""

from sae_lens_ext.api import hookimpl


@hookimpl
def register_architectures(register):
    from sae_lens_ext.api import Architecture
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
    from sae_lens_ext.api import LossTerm
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
            sparse_aware=True,
        )
    )
    register(
        LossTerm(
            "adaptive_l1",
            adaptive_l1_loss,
            "L1 on acts * decoder norms, scaled by reconstruction cosine similarity",
            sparse_aware=True,
        )
    )
    register(
        LossTerm(
            PREFIX_TERM,
            prefix_reconstruction_loss,
            "mean reconstruction loss of random prefixes (first k latents) of the latent order",
            options=PREFIX_OPTIONS,
            sparse_aware=True,
        )
    )


@hookimpl
def register_presets(register):
    from sae_lens_ext_plugins.freq_ordered.presets import presets

    for preset in presets():
        register(preset)


@hookimpl
def default_demo_architecture():
    """``sae-lens demo`` trains ``freq_ordered`` at its defaults (the prefix mode)."""
    return "freq_ordered"


@hookimpl
def evaluation_metrics(sae, data):
    """Ordering quality of any SAE: Spearman(latent index, firing frequency) and the
    explained variance of its first 10/25/50 % of latents."""
    from sae_lens_ext.api import Metric
    from sae_lens_ext_plugins.freq_ordered.metrics import (
        ordering_spearman,
        prefix_explained_variance,
    )

    metrics = [
        Metric(
            "ordering_spearman",
            ordering_spearman(data.firing_frequencies(sae)),
            "ordering quality: Spearman(index, frequency), -1 is perfect",
        )
    ]
    prefix = prefix_explained_variance(sae, data.rows(), fractions=(0.1, 0.25, 0.5))
    metrics += [
        Metric(
            f"prefix_explained_variance_{round(100 * f)}",
            value,
            f"explained variance of the first {f:.0%} latents",
        )
        for f, value in prefix.items()
    ]
    return metrics


@hookimpl
def run_figures(sae, data, folder):
    """The log's two frequency figures, from frequencies measured on ``data``."""
    from sae_lens_ext_plugins.freq_ordered.plots import plot_frequencies

    source = f"{data.n_rows:,} rows of fresh activations" + (
        f" ({data.description})" if data.description else ""
    )
    return plot_frequencies(data.firing_frequencies(sae), folder, source=source)


@hookimpl
def compare_figures(runs, folder):
    """``sae-lens compare``: the two frequency figures of each run, from its saved
    ``sparsity.safetensors`` (any architecture)."""
    from sae_lens_ext_plugins.freq_ordered.plots import plot_saved_runs

    return plot_saved_runs(runs, folder)


@hookimpl
def browser_panels(sae, data):
    """For any SAE in ``sae-lens browse``: the prefix-EV curve beside the index."""
    from sae_lens_ext_plugins.freq_ordered.browse import prefix_curve_panel

    return [prefix_curve_panel(sae, data)]
