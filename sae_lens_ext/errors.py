"""One-line errors for the ``sae-lens`` command and its run library (no click, no torch: cheap).

The library raises :class:`CliError` (built by :func:`fail`); the command line
(``sae_lens_ext/cli.py``) prints it as one line ``Error: ...`` and exits with its code."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

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


class CliError(Exception):
    """An error the user can fix: the command prints it as one line ``Error: ...`` and
    exits with ``exit_code`` (2, bad input, unless said otherwise)."""

    def __init__(self, message: str, exit_code: int = USAGE) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, exit_code

    def format_message(self) -> str:
        """The message, as the command prints it after ``Error: ``."""
        return self.message


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
    error: type[Exception]
    load: Callable[[str], Any]
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


def is_other_rank() -> bool:
    """A process of a ``torchrun`` launch other than rank 0 (from torchrun's ``RANK``): it
    prints no warnings and no final error, rank 0 says them once (``--debug``: all do)."""
    return os.environ.get("RANK", "0") not in ("", "0") and not debug()


#: Upstream warnings the command says once, in its own words (message prefix -> note).
EXPLAINED_WARNINGS = {
    "Dataset is not tokenized": "SAE-Lens tokenizes this text dataset as it reads it; a "
    "dataset tokenized beforehand (SAE-Lens's PretokenizeRunner) saves that time",
    "Decoder weights are not normalized": "SAE-Bench: this SAE's decoder rows are not unit "
    "norm (SAE-Lens saves them unscaled); SAE-Bench evaluates the SAE as it is, so its L1 "
    "and absorption compare with SAE-Bench's hub SAEs (decoder norms folded into the "
    "encoder) only after sae.fold_W_dec_norm()",
}
_shown: set[str] = set()


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for the command: ``Warning: message`` on one line (no source
    line), each text once, upstream's known warnings in the words of
    :data:`EXPLAINED_WARNINGS`, nothing on torchrun ranks other than 0."""
    if is_other_rank():
        return
    text = one_line(message) or category.__name__
    text = next((note for k, note in EXPLAINED_WARNINGS.items() if text.startswith(k)), text)
    if text in _shown:
        return
    _shown.add(text)
    where = f" ({filename}:{lineno})" if debug() else ""
    stream = file if hasattr(file, "write") else sys.stderr
    stream.write(f"Warning: {text}{where}\n")


def install_warning_format() -> None:
    """Show warnings with :func:`show_warning` for this command (each text once per command)."""
    import warnings

    _shown.clear()
    warnings.showwarning = show_warning


def one_line(text: object) -> str:
    """Collapse a message onto one line."""
    return " ".join(str(text).split())
