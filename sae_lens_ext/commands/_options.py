"""Click options shared by the commands that train (click only: cheap to import)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def run_options(log_every: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--resume``, ``--overwrite``, ``--log-every`` (default ``log_every``) and ``--progress``."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(
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
                click.option(
                    "--log-every",
                    type=click.IntRange(min=1),
                    default=log_every,
                    show_default=True,
                    help="Write losses to training_log.jsonl every this many steps.",
                ),
                click.option(
                    "--progress",
                    type=click.Choice(["auto", "bar", "plain", "none"]),
                    default="auto",
                    show_default=True,
                    help="A rich bar on a terminal, plain lines otherwise (auto).",
                ),
            ]
        ):
            f = option(f)
        return f

    return decorate


def data_streams_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-streams``: the independent streams every batch is made of."""
    return click.option(
        "--data-streams",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Independent data streams each batch is made of, an equal block from each "
        "(0: one per process). Under torchrun each process serves its share of them, so "
        "the data, and the trained SAE, are the same on any number of processes dividing it.",
    )(f)
