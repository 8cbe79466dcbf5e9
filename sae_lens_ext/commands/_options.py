"""Click options shared by the commands that train (click only: cheap to import)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from typing_extensions import override

from sae_lens_ext.run.values import NotANumber, to_number

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class IntRange(click.IntRange):
    """click's ``IntRange`` that also takes whole numbers written as Python writes floats
    (``--samples 1e6``, ``2.0e+3``); ``1.5`` is refused, not truncated."""

    @override
    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (str, float)):
            try:
                value = to_number(value, int)
            except NotANumber as exc:
                self.fail(f"{value!r}: {exc}", param, ctx)
        return super().convert(value, param, ctx)


def _stacked(options: list[Decorator]) -> Decorator:
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def progress_options(log_file: str = "training_log.jsonl") -> Decorator:
    """``--log-every`` (written to ``log_file``; unset: chosen from the run's length) and
    ``--progress``."""
    return _stacked(
        [
            click.option(
                "--log-every",
                type=IntRange(min=1),
                default=None,
                help=f"Write losses to {log_file} every this many steps  [default: about "
                "150 records per run, every step of a run under 225 steps]",
            ),
            click.option(
                "--progress",
                type=click.Choice(["auto", "bar", "plain", "none"]),
                default="auto",
                show_default=True,
                help="A rich bar on a terminal, plain lines otherwise (auto).",
            ),
        ]
    )


def run_options() -> Decorator:
    """``--resume``, ``--overwrite`` and :func:`progress_options`."""
    return _stacked(
        [
            click.option(
                "--resume",
                is_flag=True,
                help="Continue from the last checkpoint of the output.",
            ),
            click.option(
                "--overwrite",
                is_flag=True,
                help="Replace an output folder that already holds a trained SAE or checkpoints.",
            ),
            progress_options(),
        ]
    )


def data_streams_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-streams``: the independent streams every batch is made of."""
    return click.option(
        "--data-streams",
        type=IntRange(min=0),
        default=0,
        show_default=True,
        help="Independent data streams each batch is made of, an equal block from each "
        "(0: one per process). Under torchrun each process serves its share of them, so "
        "the data, and the trained SAE, are the same on any number of processes dividing it.",
    )(f)


def debug_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--debug`` (show tracebacks) to a command or group: the one definition."""

    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        from sae_lens_ext.errors import set_debug

        set_debug(value)
        return value

    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=callback,
        help="Show full tracebacks instead of one-line errors.",
    )(f)
