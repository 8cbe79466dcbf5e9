"""The hooks a plugin may implement (the rest of the plugin API is ``sae_lens_ext.api``).

A plugin is any module or object registered under the ``sae_lens_ext``
entry-point group. It implements some of these hooks, decorated with
:data:`hookimpl`::

    from sae_lens_ext.api import hookimpl, LossTerm

    @hookimpl
    def register_loss_terms(register):
        register(LossTerm(name="my_term", fn=my_term))

Plugin modules are imported when ``sae_lens`` is imported and when the
``sae-lens`` command starts, so keep them light: import torch and sae_lens
inside hook bodies or in submodules the hooks import.

The core calls every hook through pluggy, one plugin at a time
(:func:`sae_lens_ext.plugins.call_each`): implement a hook with only the arguments you
use; a plugin whose hook raises is named in a ``PluginWarning`` and left out while the
others go on; a hook implementation whose name is not one of these is reported at load
(``pm.check_pending()``) and its plugin skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    import click

    from sae_lens_ext.architectures import Architecture
    from sae_lens_ext.browse.data import BrowserData, Panel
    from sae_lens_ext.data.synthetic import DemoSetup
    from sae_lens_ext.metrics import EvalData, Metric
    from sae_lens_ext.presets import Preset
    from sae_lens_ext.run.results import RunResults
    from sae_lens_ext.training.loss_terms import LossTerm
    from sae_lens_ext.training.resampling import ResampleRequest, ResampleResult

PROJECT = "sae_lens_ext"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_architectures(register: Callable[[Architecture], None]) -> None:
    """Register SAE architectures with SAE-Lens.

    Call ``register(Architecture(...))`` once per architecture. Each one is
    added to ``sae_lens.registry`` (inference class and, if given, training
    class, each with its config class) as soon as ``sae_lens`` is imported, so
    SAE-Lens's loaders, runners and SAE-Bench find it unchanged.
    """


@hookspec
def register_loss_terms(register: Callable[[LossTerm], None]) -> None:
    """Register named loss terms.

    Every training SAE that takes loss terms (a plugin architecture built on
    ``LossTermTrainingSAE``, or a twin ``<name>_with_loss_terms`` of an SAE-Lens one)
    adds every term enabled in its config's ``loss_terms`` field (for example
    ``"decoder_orthogonality=0.01@500"``: coefficient 0.01, warmed up over 500
    steps through SAE-Lens's ``TrainCoefficientConfig``) to its loss.
    """


@hookspec
def register_presets(register: Callable[[Preset], None]) -> None:
    """Register named presets of training-config settings.

    Call ``register(Preset(name, architecture, settings, description))`` once per preset.
    ``sae-lens train --preset NAME`` and ``sae-lens demo --preset NAME`` start from the
    preset of the chosen architecture (the user's own settings win), as does a sweep
    variant's ``preset: NAME``; ``sae-lens train --architecture ARCH --help-options`` lists
    them with their flags. SAE-Lens's own runner takes no ``--preset``: give it those flags.
    """


@hookspec(firstresult=True)
def resample_dead_latents(request: ResampleRequest) -> ResampleResult | None:
    """Choose new parameters for dead latents; the first non-``None`` result wins.

    ``request`` carries the SAE, the indices of dead latents and the current
    batch. Return a :class:`~sae_lens_ext.api.ResampleResult` giving, for
    some of the SAE's latent-indexed parameters, the new values of the dead
    latents' rows. The core writes them after the optimizer step and resets the
    optimizer moments of exactly those rows. Return ``None`` to let the next
    plugin decide (mark a fallback with ``@hookimpl(trylast=True)``).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``sae-lens`` command-line tool (``cli.command()``)."""


@hookspec(firstresult=True)
def demo_setup(architecture: str) -> DemoSetup | None:
    """How ``sae-lens demo --architecture architecture`` trains it: config defaults and,
    optionally, its own synthetic data. Return ``None`` for architectures you do not
    know; with no answer the demo uses SAE-Lens's ``SyntheticModel`` and upstream defaults.
    """


@hookspec(firstresult=True)
def default_demo_architecture() -> str | None:
    """The architecture ``sae-lens demo`` trains when ``--architecture`` is not given."""


@hookspec
def evaluation_metrics(sae: Any, data: EvalData) -> list[Metric] | None:
    """Metrics this plugin adds to ``demo`` and ``evaluate`` for ``sae`` (any SAE-Lens SAE)
    on ``data``; return ``None`` when they do not apply (e.g. sequence metrics on rows).
    Each :class:`~sae_lens_ext.api.Metric` becomes a ``metrics.json`` key and a table row.
    """


@hookspec
def run_figures(sae: Any, data: EvalData, folder: Path) -> list[Path] | None:
    """Write this plugin's figures of ``sae`` on ``data`` into ``folder``; return their paths."""


@hookspec
def compare_figures(runs: Sequence[RunResults], folder: Path) -> list[Path] | None:
    """Write this plugin's figures of saved runs into ``folder`` for ``sae-lens compare``
    (a figure of one run into ``folder / run.name``); return their paths.

    ``runs`` are :class:`~sae_lens_ext.api.RunResults` read from the run folders (metrics,
    training log, SAE-Bench results, ``frequencies()``): draw from them, retrain nothing,
    and print one line for a run that lacks what a figure needs.
    """


@hookspec
def browser_panels(sae: Any, data: BrowserData) -> list[Panel] | None:
    """Panels this plugin adds to ``sae-lens browse`` for ``sae`` (any SAE-Lens SAE).

    ``data`` (:class:`~sae_lens_ext.browse.data.BrowserData`) holds what the browser shows:
    the browsed latents, frequencies, top contexts, histograms, and a sample of the input
    activations as whole contexts. Return :class:`~sae_lens_ext.browse.data.Panel` objects
    (an HTML/SVG fragment each; ``latent=None`` puts one beside the index, ``latent=i`` on
    latent ``i``'s card), or ``None`` when nothing applies.
    """
