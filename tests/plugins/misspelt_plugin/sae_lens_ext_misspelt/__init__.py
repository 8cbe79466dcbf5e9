"""A third-party plugin used by the tests: ``register_loss_term`` (no s) is no hook."""

from sae_lens_ext.api import hookimpl


@hookimpl
def register_loss_term(register):
    raise AssertionError("never called: the plugin is refused at load")
