"""How the core calls plugins: through pluggy, one plugin at a time, with one failure policy,
collisions that do not depend on load order, and errors that name the plugin and the term.

The plugins here are registered in-process (``register_plugin``) and unregistered after each
test; the same cases with installed distributions run in tests/test_plugins_e2e.py and the
error table (tests/test_cli_errors.py)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import click
import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

from sae_lens_ext import hookimpl, plugins
from sae_lens_ext.metrics import EvalData, Metric
from sae_lens_ext.plugins import LossTermNotFinite, PluginError, PluginWarning
from sae_lens_ext.training.after_step import TrainingGuard
from sae_lens_ext.training.loss_terms import LossTerm, LossTermSpec, set_logging_step
from sae_lens_ext.training.sae import evaluate_loss_terms


@pytest.fixture
def register():
    """``register(obj, name)``: an in-process plugin, unregistered (and forgotten) after."""
    names: list[str] = []

    def add(obj: object, name: str) -> None:
        names.append(name)
        plugins.register_plugin(obj, name)

    yield add
    for name in names:
        if plugins.pm.get_plugin(name) is not None:
            plugins.pm.unregister(name=name)
        plugins._infos.pop(name, None)
    plugins._architectures = plugins._loss_terms = None


class Good:
    @hookimpl
    def evaluation_metrics(self, data):  # a subset of the hook's arguments: pluggy matches
        return [Metric("unit_good", float(data.n_rows))]


class Bad:
    @hookimpl
    def evaluation_metrics(self, sae, data):
        raise RuntimeError("metric boom")


class NotAList:
    @hookimpl
    def evaluation_metrics(self, sae, data):
        return Metric("unit_lonely", 1.0)


def data() -> EvalData:
    return EvalData(torch.randn(32, 8))


def test_a_failing_plugin_is_named_once_and_the_others_go_on(register) -> None:
    from sae_lens_ext.run.report import plugin_metrics

    register(Bad(), "unit_bad")
    register(Good(), "unit_good")
    register(NotAList(), "unit_not_a_list")
    with pytest.warns(PluginWarning) as caught:
        metrics = plugin_metrics(None, data())
    messages = [str(w.message) for w in caught]
    assert any(
        "plugin 'unit_bad' (registered in-process) skipped (evaluation_metrics failed): "
        "RuntimeError: metric boom" in m
        for m in messages
    ), messages
    assert any("'unit_not_a_list'" in m and "expected a list of Metric" in m for m in messages)
    assert [m.value for m in metrics if m.key == "unit_good"] == [32.0]
    with warnings.catch_warnings(record=True) as again:  # printed once per process
        warnings.simplefilter("always")
        plugin_metrics(None, data())
    assert not [w for w in again if "unit_bad" in str(w.message)]


def test_hookwrappers_wrap_every_plugin_call(register) -> None:
    seen: list[list] = []

    class Tracer:
        @hookimpl(wrapper=True)
        def evaluation_metrics(self, sae, data):
            result = yield
            seen.append(result)
            return result

    register(Good(), "unit_good")
    register(Tracer(), "unit_tracer")
    answers = dict(plugins.call_each("evaluation_metrics", sae=None, data=data()))
    assert answers["unit_good"][0].key == "unit_good"
    assert "unit_tracer" not in answers  # a wrapper is no answering plugin
    assert [answers["unit_good"]] in seen  # the wrapper saw (and passed on) that call


def test_first_result_hooks_skip_a_failing_plugin(register) -> None:
    from sae_lens_ext.data.synthetic import DemoSetup

    class Broken:
        @hookimpl(tryfirst=True)
        def demo_setup(self, architecture):
            raise KeyError("setup boom")

    class Fallback:
        @hookimpl(trylast=True)
        def demo_setup(self, architecture):
            return DemoSetup(samples=123) if architecture == "unit_arch" else None

    register(Fallback(), "unit_fallback")
    register(Broken(), "unit_broken")
    with pytest.warns(PluginWarning, match=r"'unit_broken'.*demo_setup failed.*setup boom"):
        assert plugins.call_first("demo_setup", architecture="unit_arch").samples == 123


def test_a_misspelt_hook_is_reported_and_its_plugin_skipped(register) -> None:
    class Typo:
        @hookimpl
        def register_loss_term(self, register):  # no such hook
            pass

    with pytest.warns(
        PluginWarning, match=r"'register_loss_term' \(did you mean 'register_loss_terms'\?\)"
    ):
        register(Typo(), "unit_typo")
    assert plugins.pm.get_plugin("unit_typo") is None
    plugins.pm.check_pending()  # nothing else pending


def test_register_commands_failure_leaves_no_half_added_command(register) -> None:
    class Half:
        @hookimpl
        def register_commands(self, cli):
            cli.add_command(click.Command("unit-half"))
            raise RuntimeError("commands boom")

    register(Half(), "unit_half")
    group = click.Group()
    with pytest.warns(PluginWarning, match="'unit_half'.*register_commands failed"):
        plugins.add_plugin_commands(group)
    assert "unit-half" not in group.commands


def zero(ctx):
    return ctx.feature_acts.new_zeros(())


class TwinA:
    @hookimpl
    def register_loss_terms(self, register):
        register(LossTerm("unit_twin", zero))
        register(LossTerm("frequency_ordering", zero))  # the built-in freq_ordered's name


class TwinB:
    @hookimpl
    def register_loss_terms(self, register):
        register(LossTerm("unit_twin", zero))


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_collisions_do_not_depend_on_load_order(register, order) -> None:
    objects = {"a": TwinA(), "b": TwinB()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for key in order:
            register(objects[key], f"unit_twin_{key}")
        terms = plugins.loss_terms()
    assert "unit_twin" not in terms
    assert terms["frequency_ordering"].fn is not zero  # the built-in keeps its name
    assert plugins.owner_of("loss_terms", "frequency_ordering").builtin
    why = plugins.refusal("loss_terms", "unit_twin")
    assert why.startswith(
        "loss term 'unit_twin' is registered by plugin 'unit_twin_a' (registered in-process) "
        "and plugin 'unit_twin_b' (registered in-process), so none of them is used"
    )
    assert "SAE_LENS_EXT_LOAD_PLUGINS=" in why
    messages = [str(w.message) for w in caught if w.category is PluginWarning]
    assert sum("'unit_twin' is registered by" in m for m in messages) <= 1
    assert str(plugins.unknown_loss_term("unit_twin")) == f"loss_terms: {why}"


# --- loss terms: checked, named ------------------------------------------------------------


def raises(ctx):
    raise ValueError("term boom")


def vector(ctx):
    return ctx.feature_acts.sum(-1)


def integer(ctx):
    return (ctx.feature_acts > 0).sum()


def number(ctx):
    return 0.5


def layout(ctx):
    from sae_lens_ext.data.windows import BatchLayoutError

    raise BatchLayoutError("set batch_size to a multiple of 4")


def logs(ctx):
    ctx.metrics["unit_logged"] = ctx.is_logging_step and ctx.step_input.is_logging_step
    return ctx.feature_acts.mean()


class Terms:
    @hookimpl
    def register_loss_terms(self, register):
        for fn in (raises, vector, integer, number, layout, logs):
            register(LossTerm(f"unit_{fn.__name__}", fn))


def evaluate(name: str, sae: torch.nn.Module, logging_step: bool = False, metrics=None):
    term = plugins.loss_terms()[name]
    acts = torch.rand(4, 6)
    step = TrainStepInput(
        sae_in=torch.randn(4, 3),
        coefficients={name: 2.0},
        dead_neuron_mask=None,
        n_training_steps=7,
        is_logging_step=logging_step,
    )
    return evaluate_loss_terms(
        sae, [(LossTermSpec(name, 1.0), term)], step, acts, acts, torch.randn(4, 3),
        options={}, metrics={} if metrics is None else metrics,
    )  # fmt: skip


EXPECTED = "a loss term returns a 0-dimensional floating-point tensor (e.g. x.mean())"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("unit_raises", "raised ValueError: term boom (training step 7)"),
        ("unit_vector", f"returned a tensor of shape (4,); {EXPECTED}"),
        ("unit_integer", f"returned a torch.int64 tensor; {EXPECTED}"),
        ("unit_number", f"returned float; {EXPECTED}"),
    ],
)
def test_a_bad_term_names_itself_and_its_plugin(register, name, message) -> None:
    register(Terms(), "unit_terms")
    with pytest.raises(PluginError) as caught:
        evaluate(name, torch.nn.Module())
    assert str(caught.value) == (
        f"loss term {name!r} of plugin 'unit_terms' (registered in-process) {message}"
    )
    assert caught.value.plugin == "unit_terms" and caught.value.where == f"loss term {name!r}"


def test_the_cores_own_errors_pass_through_a_term(register) -> None:
    from sae_lens_ext.data.windows import BatchLayoutError

    register(Terms(), "unit_terms")
    with pytest.raises(BatchLayoutError, match=r"^set batch_size to a multiple of 4$"):
        evaluate("unit_layout", torch.nn.Module())


def test_terms_know_the_logging_step_from_upstream_or_the_loop(register) -> None:
    register(Terms(), "unit_terms")
    sae, metrics = torch.nn.Module(), {}
    losses = evaluate("unit_logs", sae, metrics=metrics)
    assert metrics == {"unit_logged": False} and set(losses) == {"unit_logs_loss"}
    evaluate("unit_logs", sae, logging_step=True, metrics=metrics)  # upstream's wandb step
    assert metrics == {"unit_logged": True}
    set_logging_step(sae, True)  # a loop that logs steps of its own
    evaluate("unit_logs", sae, metrics=metrics)
    assert metrics == {"unit_logged": True}
    set_logging_step(sae, False)
    evaluate("unit_logs", sae, metrics=metrics)
    assert metrics == {"unit_logged": False}


def test_the_guard_names_the_first_non_finite_plugin_term(register) -> None:
    register(Terms(), "unit_terms")
    plugins.loss_terms()
    guard = TrainingGuard()
    acts = torch.ones(2, 3)
    ok = {"mse_loss": torch.tensor(1.0), "unit_vector_loss": torch.tensor(0.5)}
    guard.observe(0, torch.tensor(1.5), acts, acts, losses=ok)
    bad = {"mse_loss": torch.tensor(1.0), "unit_vector_loss": torch.tensor(math.nan)}
    guard.observe(1, torch.tensor(math.nan), acts, acts, losses=bad)
    guard.observe(
        2, torch.tensor(math.nan), acts, acts, losses={"mse_loss": torch.tensor(math.inf)}
    )
    with pytest.raises(LossTermNotFinite) as caught:
        guard.check()
    assert str(caught.value).startswith(
        "training step 1: loss term 'unit_vector' of plugin 'unit_terms' (registered "
        "in-process) is not finite (NaN or inf); lower its coefficient, or leave it out"
    )
    assert isinstance(caught.value, FloatingPointError)
    resumed = TrainingGuard()  # the names travel with the checkpoint
    resumed.load_state_dict(guard.state_dict())
    with pytest.raises(LossTermNotFinite, match="training step 1: loss term 'unit_vector'"):
        resumed.check()


def test_the_guard_names_a_non_plugin_loss_and_reads_old_checkpoints() -> None:
    guard = TrainingGuard()
    acts = torch.ones(2, 3)
    losses = {"mse_loss": torch.tensor(math.inf), "l1_loss": torch.tensor(1.0)}
    guard.observe(4, torch.tensor(math.inf), acts, acts, losses=losses)
    with pytest.raises(FloatingPointError) as caught:
        guard.check()
    assert str(caught.value) == (
        "training step 4: loss is not finite (mse_loss: NaN or inf); lower lr or the loss "
        "coefficients"
    )
    old = {"steps": 3, "last_step": 2, "state": torch.tensor([2, 0, 0, 1])}  # 4 entries
    resumed = TrainingGuard()
    resumed.load_state_dict(old)
    with pytest.raises(FloatingPointError, match=r"training step 2: loss is not finite;"):
        resumed.check()


def test_figures_hook_items_are_paths(register, tmp_path: Path) -> None:
    from sae_lens_ext.run.report import plugin_figures

    class Figures:
        @hookimpl
        def run_figures(self, sae, data, folder):
            path = folder / "unit.png"
            path.write_bytes(b"png")
            return [path]

    register(Figures(), "unit_figures")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # built-in plugins may not draw for sae=None
        paths = plugin_figures(None, data(), tmp_path)
    assert tmp_path / "unit.png" in paths
