"""A third-party plugin used by the tests: the optional hooks, for the toy plugin's ``toy_relu``."""

from sae_lens_ext.api import hookimpl

ARCHITECTURE = "toy_relu"


@hookimpl
def demo_setup(architecture):
    if architecture != ARCHITECTURE:
        return None
    from sae_lens_ext.api import DemoSetup

    return DemoSetup(sae_settings={"l1_coefficient": 0.3}, samples=16_384)


@hookimpl
def evaluation_metrics(sae, data):
    if sae.cfg.architecture() != ARCHITECTURE:
        return None
    from sae_lens_ext.api import Metric

    norms = sae.W_dec.detach().norm(dim=1)
    return [Metric("toy_decoder_norm", float(norms.mean()), "mean decoder row norm (toy)")]


@hookimpl
def run_figures(sae, data, folder):
    if sae.cfg.architecture() != ARCHITECTURE:
        return None
    from sae_lens_ext.api import pyplot, save_figure

    fig, ax = pyplot().subplots()
    ax.hist(sae.W_dec.detach().norm(dim=1).cpu().numpy(), bins=20)
    ax.set_xlabel("decoder row norm")
    ax.set_ylabel("latents")
    return [save_figure(fig, folder / "toy_decoder_norms.png")]
