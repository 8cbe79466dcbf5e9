"""Commands of the ``sae-lens`` tool, one module each.

Importing this package (and each command module) costs only click: the
commands import torch and SAE-Lens inside their bodies, so ``sae-lens --help``
and ``sae-lens train --help`` stay fast.
"""

from __future__ import annotations

import click


def add_commands(cli: click.Group) -> None:
    """Attach the built-in commands to the ``sae-lens`` group."""
    from sae_lens_ext.commands.browse import browse_command
    from sae_lens_ext.commands.compare import compare_command, plots_command
    from sae_lens_ext.commands.demo import demo_command
    from sae_lens_ext.commands.evaluate import evaluate_command
    from sae_lens_ext.commands.sweep import sweep_command
    from sae_lens_ext.commands.train import train_command
    from sae_lens_ext.commands.upload import upload_command

    for command in (
        train_command,
        demo_command,
        sweep_command,
        evaluate_command,
        compare_command,
        plots_command,
        upload_command,
        browse_command,
    ):
        cli.add_command(command)
