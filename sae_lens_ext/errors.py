"""One-line errors for the ``sae-lens`` command and its run library (click only: cheap)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import click

#: Exit code for bad input (unknown flag or value, missing path, ...), as click uses.
USAGE = 2
#: Exit code for a failure while running (training diverged, disk full, ...).
FAILURE = 1
#: Exit code after Ctrl-C (128 + SIGINT), checkpoint saved.
INTERRUPTED = 130

_debug = [os.environ.get("SAE_LENS_DEBUG", "") not in ("", "0")]


def set_debug(value: bool) -> None:
    """Show full tracebacks (``--debug`` or ``SAE_LENS_DEBUG=1``)."""
    _debug[0] = _debug[0] or value


def debug() -> bool:
    return _debug[0]


class CliError(click.ClickException):
    """An error the user can fix: printed as one line ``Error: ...`` with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TrainingInterrupted(Exception):
    """Raised at a step boundary after Ctrl-C/SIGTERM, once the checkpoint is saved."""

    def __init__(self, step: int, checkpoint: Path | None, note: str | None = None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = (
            f"checkpoint saved to {checkpoint}; rerun the same command with --resume"
            if checkpoint is not None
            else "no checkpoint saved (none was due yet, or no checkpoint path)"
        )
        if checkpoint is not None and note:  # what a resumed run will not reproduce
            where += f" ({note})"
        super().__init__(f"interrupted after step {step}: {where}")


def fail(message: str, exit_code: int = USAGE) -> CliError:
    """Build the error to ``raise``; ``message`` should name the setting to change."""
    return CliError(one_line(message), exit_code)


def holds_trained_sae(folder: Path) -> bool:
    """Whether ``folder`` holds SAE-Lens's saved SAE (``cfg.json`` and its weights)."""
    return (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()


def refuse_trained(output: Path, flag: str) -> NoReturn:
    """Refuse to write over a trained SAE (the fix: ``--overwrite`` or another folder)."""
    raise fail(
        f"{flag} {output} already holds a trained SAE; pass --overwrite to replace it "
        f"or choose another {flag}"
    )


def read_mapping(path: str | Path, setting: str, expected: str) -> dict:
    """The mapping in a YAML file, or a JSON file (name ending ``.json``), given as
    ``setting`` (empty: a file the command found itself); else one line, exit 2: the file is
    missing, cannot be parsed, or is not a mapping (``expected`` says what it should hold)."""
    file = Path(path)
    where = f"{setting} {path}" if setting else str(path)
    if not file.is_file():
        raise fail(f"{where}: no such file")
    if file.suffix == ".json":
        import json

        kind, error, load = "JSON", json.JSONDecodeError, json.loads
    else:
        import yaml

        kind, error, load = "YAML", yaml.YAMLError, yaml.safe_load
    try:
        data = load(file.read_text())
    except (error, UnicodeDecodeError) as exc:
        raise fail(f"{where}: not valid {kind} ({one_line(exc)})") from exc
    if not isinstance(data, dict):
        raise fail(f"{where}: expected {expected}")
    return data


def one_line(text: object) -> str:
    """Collapse a message onto one line."""
    return " ".join(str(text).split())


def debug_option(f):  # type: ignore[no-untyped-def]
    """Add ``--debug`` (show tracebacks) to a command."""

    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
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
