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
