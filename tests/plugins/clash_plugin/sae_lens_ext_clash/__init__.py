"""A third-party plugin used by the tests: it registers names others already use: the
built-in freq_ordered's loss term ``frequency_ordering`` (the built-in keeps it), the probes
plugin's ``twin`` (refused for both) and SAE-Lens's own architecture ``standard`` (kept)."""

from sae_lens_ext.api import hookimpl


def zero(ctx):
    return ctx.feature_acts.new_zeros(())


@hookimpl
def register_loss_terms(register):
    from sae_lens_ext.api import LossTerm

    register(LossTerm("frequency_ordering", zero, description="clashes with a built-in"))
    register(LossTerm("twin", zero, description="clashes with the probes plugin"))
    register(LossTerm("clash_only", zero, description="a name no one else uses"))


@hookimpl
def register_architectures(register):
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    from sae_lens_ext.api import Architecture

    class ClashingStandardSAE(StandardSAE):
        pass

    register(Architecture("standard", ClashingStandardSAE, StandardSAEConfig))
