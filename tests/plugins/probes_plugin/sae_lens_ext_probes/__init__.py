"""A third-party plugin used by the tests: loss terms that misbehave on purpose (one per
error the core must trace to its plugin), a well-behaved term that logs a metric only on
logging steps, and metric and figure hooks that fail."""

from sae_lens_ext.api import hookimpl


def raises(ctx):
    raise RuntimeError("this loss term fails on purpose")


def not_finite(ctx):
    return ctx.sae.W_dec.sum() * float("nan")


def not_scalar(ctx):
    return ctx.feature_acts.sum(-1)


def integer(ctx):
    return (ctx.feature_acts > 0).sum()


def logs_on_logging_steps(ctx):
    """A small decoder-norm penalty; on logging steps it logs its value and the step."""
    value = ctx.sae.W_dec.pow(2).mean()
    if ctx.is_logging_step:
        ctx.metrics["probe_decoder_square"] = value.detach()
        ctx.metrics["probe_logged_at_step"] = ctx.step_input.n_training_steps
    return value


def twin(ctx):
    return ctx.feature_acts.new_zeros(())


TERMS = (raises, not_finite, not_scalar, integer, logs_on_logging_steps, twin)


@hookimpl
def register_loss_terms(register):
    from sae_lens_ext.api import LossTerm

    for fn in TERMS:
        register(LossTerm(fn.__name__, fn, description=(fn.__doc__ or "test-only").strip()))


@hookimpl
def evaluation_metrics(sae, data):
    raise RuntimeError("this metric fails on purpose")


@hookimpl
def run_figures(sae, data, folder):
    raise RuntimeError("this figure fails on purpose")
