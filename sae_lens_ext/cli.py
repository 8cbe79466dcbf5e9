"""The ``sae-lens`` command. Keep module import cheap: heavy imports go inside commands."""

from __future__ import annotations

import json
import sys

import click

from sae_lens_ext import __version__


class _LazyPluginGroup(click.Group):
    """Adds plugin commands (``register_commands`` hook) the first time commands are listed."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        from sae_lens_ext.plugins import _call_each, load_plugins

        load_plugins()
        _call_each("register_commands", cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command


@click.group(cls=_LazyPluginGroup)
@click.version_option(__version__, prog_name="sae-lens-ext")
def cli() -> None:
    """Train, evaluate and share sparse autoencoders with SAE-Lens and its plugins."""


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List loaded plugins: distribution, version, architectures, loss terms, resamplers."""
    import warnings

    from sae_lens_ext.plugins import plugin_infos

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        infos = plugin_infos()
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sae-lens-ext plugins")
    for column in ("plugin", "distribution", "architectures", "loss terms", "resampler", "status"):
        table.add_column(column)
    for info in infos:
        dist = f"{info.distribution} {info.version}" if info.distribution else "(in-process)"
        table.add_row(
            info.name,
            dist,
            ", ".join(info.architectures) or "-",
            ", ".join(info.loss_terms) or "-",
            "yes" if info.resampler else "-",
            f"[red]{info.error}[/red]" if info.error else "[green]ok[/green]",
        )
    Console().print(table)


def main() -> None:  # pragma: no cover - console entry point alias
    sys.exit(cli())
