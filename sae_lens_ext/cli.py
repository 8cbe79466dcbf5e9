"""The ``sae-lens`` command. Keep module import cheap: heavy imports go inside commands."""

from __future__ import annotations

import json
import sys

import click
from typing_extensions import override

from sae_lens_ext import __version__


class _LazyPluginGroup(click.Group):
    """Adds plugin commands (``register_commands`` hook) the first time commands are listed."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        from sae_lens_ext.plugins import add_plugin_commands

        add_plugin_commands(self)

    @override
    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    @override
    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    @override
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Run the command; print errors as one line (no traceback unless ``--debug``)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        from sae_lens_ext.errors import FAILURE, INTERRUPTED, USAGE, debug, one_line

        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {one_line(exc.format_message())}{where}", err=True)
            sys.exit(USAGE)
        except click.ClickException as exc:
            if debug():
                raise
            click.echo(f"Error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Aborted.", err=True)
            sys.exit(INTERRUPTED)
        except Exception as exc:
            if debug():
                raise
            click.echo(
                f"Error: {type(exc).__name__}: {one_line(exc)} (add --debug for the traceback)",
                err=True,
            )
            sys.exit(FAILURE)
        sys.exit(rv if isinstance(rv, int) else 0)


def _debug_callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    from sae_lens_ext.errors import set_debug

    set_debug(value)


@click.group(cls=_LazyPluginGroup)
@click.version_option(__version__, prog_name="sae-lens-ext")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_debug_callback,
    help="Show full tracebacks instead of one-line errors.",
)
def cli() -> None:
    """Train, evaluate and share sparse autoencoders with SAE-Lens and its plugins.

    Start with `sae-lens demo` (trains on ground-truth synthetic data, offline, in
    about a minute), or `sae-lens train --help` for real models.
    """
    from sae_lens_ext.host_memory import keep_freed_host_memory

    keep_freed_host_memory()


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


from sae_lens_ext.commands import add_commands  # noqa: E402  (click only: stays cheap)

add_commands(cli)

if __name__ == "__main__":  # python -m sae_lens_ext.cli
    cli()
