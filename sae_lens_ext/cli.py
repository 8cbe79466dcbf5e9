"""The ``sae-lens`` command. Keep module import cheap: heavy imports go inside commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click
from typing_extensions import override

from sae_lens_ext import __version__
from sae_lens_ext.commands._options import debug_option


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
        from sae_lens_ext.errors import (
            FAILURE,
            INTERRUPTED,
            USAGE,
            CliError,
            debug,
            install_warning_format,
            one_line,
        )

        install_warning_format()  # one line each: "Warning: message"
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _say(f"Error: {one_line(exc.format_message())}{where}")
            sys.exit(USAGE)
        except (CliError, click.ClickException) as exc:  # the library's, a plugin command's
            if debug():
                raise
            _say(f"Error: {one_line(exc.format_message())}")
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            _say("Aborted.")
            sys.exit(INTERRUPTED)
        except Exception as exc:
            if debug():
                raise
            hint = " (add --debug for the traceback)"
            if _is_plugin_error(exc):  # the message names the plugin and what failed
                hint = hint if exc.__cause__ is not None else ""
                _say(f"Error: {one_line(exc)}{hint}")
            else:
                _say(f"Error: {type(exc).__name__}: {one_line(exc)}{hint}")
            sys.exit(FAILURE)
        sys.exit(rv if isinstance(rv, int) else 0)


def _say(line: str) -> None:
    """The final line on stderr; under torchrun only rank 0 says it (all with --debug)."""
    from sae_lens_ext.errors import is_other_rank

    if not is_other_rank():
        click.echo(line, err=True)


def _is_plugin_error(exc: BaseException) -> bool:
    plugins = sys.modules.get("sae_lens_ext.plugins")  # not loaded: no plugin raised it
    return plugins is not None and isinstance(exc, plugins.PluginError)


@click.group(cls=_LazyPluginGroup)
@click.version_option(__version__, prog_name="sae-lens-ext")
@debug_option
def cli() -> None:
    """Train, evaluate and share sparse autoencoders with SAE-Lens and its plugins.

    Start with `sae-lens demo` (trains on ground-truth synthetic data, offline, in
    about a minute), or `sae-lens train --help` for real models.
    """
    from sae_lens_ext.training.host_memory import keep_freed_host_memory

    keep_freed_host_memory()


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--plain",
    is_flag=True,
    help="Tab-separated lines, names in full (the default when stdout is not a terminal).",
)
def plugins_command(as_json: bool, plain: bool) -> None:
    """List loaded plugins: distribution, version, architectures, loss terms, resamplers.

    On a terminal: a table whose cells wrap, never cut. Piped (or --plain): one
    tab-separated line per plugin under a header line, every name in full; --json: JSON.
    """
    import warnings

    from sae_lens_ext.plugins import plugin_infos

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        infos = plugin_infos()
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    header = ("plugin", "distribution", "architectures", "loss terms", "resampler", "status")
    rows = [
        (
            info.name,
            f"{info.distribution} {info.version}" if info.distribution else "(in-process)",
            ", ".join(info.architectures) or "-",
            ", ".join(info.loss_terms) or "-",
            "yes" if info.resampler else "-",
            f"error: {info.error}" if info.error else "ok",
        )
        for info in infos
    ]
    if plain or not sys.stdout.isatty():
        for row in (header, *rows):
            click.echo("\t".join(" ".join(cell.split()) for cell in row))
        return
    _print_plugin_table(header, rows)


def _print_plugin_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """A rich table when the terminal is wide enough to show every name unbroken, else one
    block per plugin (names are never cut)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cells = [[c.replace(", ", "\n") for c in row] for row in rows]
    widths = [
        max(len(line) for row in [header, *cells] for line in row[i].splitlines() or [""])
        for i in range(len(header))
    ]
    if sum(widths) + 3 * len(widths) + 1 > console.width:
        for row in rows:
            console.print(f"[bold]{row[0]}[/bold]  ({row[1]})  {row[5]}", highlight=False)
            for name, value in zip(header[2:5], row[2:5], strict=True):
                console.print(f"  {name}: {value}", highlight=False)
        return
    table = Table(title="sae-lens-ext plugins", box=box.SIMPLE_HEAD)
    for column in header:
        table.add_column(column, no_wrap=True)
    for *values, status in cells:
        table.add_row(*values, f"[red]{status}[/red]" if status != "ok" else "[green]ok[/green]")
    console.print(table)


from sae_lens_ext.commands import add_commands  # noqa: E402  (click only: stays cheap)

add_commands(cli)

if __name__ == "__main__":  # python -m sae_lens_ext.cli
    cli()
