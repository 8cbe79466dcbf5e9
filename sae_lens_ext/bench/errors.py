"""What stops a bench: data or a model it cannot load, an SAE or model it cannot evaluate.

Each is one line naming what to change: :class:`BenchDataError` words its fix with the
Python settings' names (``str()``) or the command line's (:meth:`BenchDataError.advice`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

#: SAE-Bench hub datasets that cannot be copied under ``data_dir`` (configs per language
#: pair; a dataset script): without the hub, leave them out of ``dataset_names``.
NOT_COPYABLE = ("Helsinki-NLP/europarl", "codeparrot/github-code")

#: How :meth:`BenchDataError.advice` names the settings (Python: ``BenchSettings`` fields;
#: ``{names}``: the dataset names to keep, comma-separated, ``{names_list}``: as a list).
PYTHON_NAMES = {
    "dataset": "dataset=PATH",
    "data_dir": "data_dir=DATA_DIR",
    "model": "model_name=DIR",
    "dataset_names": "overrides['{bench}']['dataset_names'] = {names_list}",
}


class BenchDataError(RuntimeError):
    """A dataset or model an evaluation needs could not be loaded.

    ``str()`` is one line for Python callers; :meth:`advice` words the same fix with other
    setting names (the command line's flags)."""

    def __init__(
        self,
        *,
        reason: str,
        bench: str = "",
        hub_ids: Sequence[str] = (),
        dataset_names: Sequence[str] = (),
        model: str = "",
    ) -> None:
        self.reason, self.bench, self.model = reason, bench, model
        self.hub_ids, self.dataset_names = list(hub_ids), list(dataset_names)
        super().__init__(self.advice(PYTHON_NAMES))

    def advice(self, names: Mapping[str, str]) -> str:
        """The message, naming settings as ``names`` does (keys of :data:`PYTHON_NAMES`)."""
        if self.model:
            return (
                f"model {self.model!r} could not be loaded ({self.reason}): connect to the "
                f"Hugging Face Hub, or pass {names['model']}, a folder written by save_pretrained"
            )
        copyable = [h for h in self.hub_ids if h not in NOT_COPYABLE]
        fixed = [h for h in self.hub_ids if h in NOT_COPYABLE]
        local = f"a local copy ({names['dataset']}) or " if self.bench == "core" else ""
        message = (
            f"{self.bench} needs dataset(s) {', '.join(self.hub_ids)} ({self.reason}): connect "
            "to the Hugging Face Hub"
        )
        if copyable:
            message += (
                f", or provide {local}copies of {', '.join(copyable)} as DATA_DIR/<hub id>/ "
                f"with its train and test splits and give {names['data_dir']}"
            )
        if fixed:
            kept = [n for n in self.dataset_names if hub_datasets([n])[0] not in NOT_COPYABLE]
            setting = names["dataset_names"].format(
                bench=self.bench, names=",".join(kept), names_list=repr(kept)
            )
            message += (
                f"; {', '.join(fixed)} cannot be copied that way: leave "
                f"{'it' if len(fixed) == 1 else 'them'} out with {setting}"
            )
        return message


class OutOfContextError(ValueError):
    """Benches that would feed single tokens to an SAE whose encoder reads several
    consecutive positions together: its code of such rows is not defined."""


class ModelTooSmallError(ValueError):
    """The model cannot serve a bench: absorption finds too few first letters that a
    probe reads from its vocabulary (SAE-Bench recommends models of 2B parameters or more)."""


def hub_datasets(dataset_names: Sequence[str]) -> list[str]:
    """The hub datasets behind SAE-Bench's dataset names (dataset_utils' dispatch)."""
    ids = {n.split("_class_set")[0].removesuffix("_sentiment") for n in dataset_names}
    return sorted(ids)


@contextlib.contextmanager
def model_errors(model_name: str) -> Iterator[None]:
    """Turn a failed model load into one line naming what to provide."""
    try:
        yield
    except OSError as error:
        raise BenchDataError(model=model_name, reason=first_line(error)) from error


@contextlib.contextmanager
def dataset_errors(
    bench: str, hub_ids: Sequence[str], dataset_names: Sequence[str] = ()
) -> Iterator[None]:
    """Turn a failed dataset load into one line naming what to provide."""
    try:
        yield
    except OSError as error:  # ConnectionError offline, FileNotFoundError / DatasetNotFoundError
        raise BenchDataError(
            bench=bench, hub_ids=hub_ids, dataset_names=dataset_names, reason=first_line(error)
        ) from error


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
