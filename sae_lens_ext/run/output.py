"""The output folder of a run: checked before anything is loaded, filled atomically.

- :meth:`RunOutput.check` validates the folder (refuses a trained SAE without
  ``--overwrite``, finds the checkpoint ``--resume`` continues from) and writes nothing.
- :meth:`RunOutput.begin` is called once the run is about to train: only now is the
  folder created. With ``--overwrite``, the previous run's files are moved aside into a
  hidden folder, not deleted.
- :meth:`RunOutput.commit` moves the final files in (``cfg.json`` last, so a half-written
  folder never looks like a trained SAE) and deletes the previous run's files.
- :meth:`RunOutput.abort` undoes a failed run: its files are removed, the previous run's
  files are put back, and folders this run created are removed. After an interruption
  (a checkpoint to ``--resume`` from) the new run's files are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sae_lens_ext.errors import (
    INTERRUPTED,
    CliError,
    TrainingInterrupted,
    fail,
    holds_trained_sae,
    one_line,
    refuse_trained,
)

CHECKPOINTS_DIR = "checkpoints"
TRAINING_LOG = "training_log.jsonl"
METRICS_FILENAME = "metrics.json"
TMP_PREFIX = ".tmp-"
REPLACED_PREFIX = ".replaced-"


def complete_checkpoints(checkpoint_dir: Path | None) -> list[Path]:
    """Finished checkpoints (temp folders of an interrupted save are ignored), oldest first."""
    from sae_lens.constants import TRAINER_STATE_FILENAME

    if checkpoint_dir is None or not checkpoint_dir.is_dir():
        return []
    found = [
        p
        for p in checkpoint_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / TRAINER_STATE_FILENAME).is_file()
    ]
    return sorted(found, key=lambda p: (_samples(p), p.stat().st_mtime))


def _samples(checkpoint: Path) -> int:
    import torch
    from sae_lens.constants import TRAINER_STATE_FILENAME

    state = torch.load(checkpoint / TRAINER_STATE_FILENAME, weights_only=False, map_location="cpu")
    return int(state["n_training_samples"])


class RunOutput:
    """One run's output folder (see the module docstring for the life cycle)."""

    def __init__(
        self,
        folder: Path,
        checkpoint_dir: Path | None,
        *,
        overwrite: bool,
        resume: bool,
        flag: str = "--output_path",
        expected: dict[str, Any] | None = None,
    ) -> None:
        """``expected``: settings of this run (``architecture``, ``d_in``, ``d_sae``) that a
        checkpoint's ``cfg.json`` must match for ``--resume``."""
        self.folder, self.checkpoint_dir = folder, checkpoint_dir
        self.overwrite, self.resume, self.flag = overwrite, resume, flag
        self.expected = expected or {}
        self.resume_from: Path | None = None
        self._created: list[Path] = []
        self._replaced: Path | None = None
        self._moved: list[tuple[Path, Path]] = []
        self._had_checkpoint_dir = False

    @property
    def log_path(self) -> Path:
        return self.folder / TRAINING_LOG

    def check(self) -> Path | None:
        """Validate the folder; return the checkpoint to resume from. Writes nothing."""
        folder, flag = self.folder, self.flag
        if folder.exists() and not folder.is_dir():
            raise fail(f"{flag} {folder} is a file; give a folder")
        if holds_trained_sae(folder) and not self.overwrite:
            refuse_trained(folder, flag)
        check_creatable(folder, flag)
        if self.checkpoint_dir is not None and self.checkpoint_dir.parent != folder:
            check_creatable(self.checkpoint_dir, "--checkpoint_path")
        checkpoints = complete_checkpoints(self.checkpoint_dir)
        if self.resume:
            if not checkpoints:
                raise fail(
                    f"--resume: no checkpoint in {self.checkpoint_dir}; run the command "
                    "without --resume to start training"
                )
            self.resume_from = checkpoints[-1]
            self._check_resumable(self.resume_from)
        elif checkpoints and not self.overwrite:
            raise fail(
                f"{self.checkpoint_dir} holds checkpoints of an earlier run: add --resume to "
                "continue it, or --overwrite to start again"
            )
        return self.resume_from

    def _check_resumable(self, checkpoint: Path) -> None:
        """The checkpoint's SAE is this run's (architecture and sizes in its ``cfg.json``)."""
        cfg_path = checkpoint / "cfg.json"
        try:
            saved = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            return  # the loader names the file if it cannot read it
        for key, value in self.expected.items():
            if key in saved and value is not None and saved[key] != value:
                raise fail(
                    f"--resume: {checkpoint} holds an SAE with {key} {saved[key]!r} "
                    f"({cfg_path}), this run has {key} {value!r}; rerun with the settings of "
                    "the interrupted run, or pass --overwrite instead of --resume to start again"
                )

    def begin(self) -> None:
        """Create the folder (remembering what this run created); with ``--overwrite``,
        move the previous run's files aside (restored by :meth:`abort`)."""
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self._created = list(reversed(missing))  # outermost first
        self._had_checkpoint_dir = self.checkpoint_dir is not None and self.checkpoint_dir.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fail(f"{self.flag} {self.folder}: cannot be created ({one_line(exc)})") from exc
        if not self.overwrite or self.resume:
            return
        previous = [p for p in self.folder.iterdir() if not p.name.startswith(".")]
        outside = self.checkpoint_dir
        if (
            outside is not None
            and outside.exists()
            and outside.resolve().parent != self.folder.resolve()
        ):
            previous.append(outside)
        if previous:
            self._replaced = self.folder / f"{REPLACED_PREFIX}{os.getpid()}"
            self._replaced.mkdir()
            for i, path in enumerate(previous):
                moved = self._replaced / f"{i}-{path.name}"
                os.replace(path, moved)
                self._moved.append((path, moved))

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """:meth:`begin`; then :meth:`commit` if the body succeeds, else :meth:`abort`
        (an interruption becomes the one-line error with exit code 130). On a
        data-parallel rank other than 0 nothing is written, and an interruption exits
        quietly with code 130 (rank 0 says where the checkpoint is)."""
        from sae_lens_ext.training import distributed

        if not distributed.is_main():
            try:
                yield
            except TrainingInterrupted:
                raise SystemExit(INTERRUPTED) from None
            return
        self.begin()
        try:
            yield
        except TrainingInterrupted as exc:
            self.abort(interrupted=exc.checkpoint is not None)
            raise CliError(str(exc), INTERRUPTED) from exc
        except BaseException:
            self.abort(interrupted=False)
            raise
        self.commit()

    def staging(self) -> contextlib.AbstractContextManager[Path]:
        """:func:`staged_folder` of the output folder (``cfg.json`` moved in last)."""
        return staged_folder(self.folder)

    def commit(self) -> None:
        """The run succeeded: delete the previous run's files."""
        if self._replaced is not None:
            shutil.rmtree(self._replaced, ignore_errors=True)
            self._replaced = None

    def abort(self, *, interrupted: bool) -> None:
        """The run failed (or was interrupted): restore the previous state."""
        if interrupted:
            return  # the checkpoint and log are what --resume continues from
        if self._replaced is not None:
            for path in self.folder.iterdir():
                if path != self._replaced:
                    _remove(path)
            if self.checkpoint_dir is not None:
                _remove(self.checkpoint_dir)
            for original, moved in self._moved:
                os.replace(moved, original)
            self._replaced.rmdir()
            self._replaced, self._moved = None, []
        elif not self.resume and not complete_checkpoints(self.checkpoint_dir):
            # nothing to resume from: remove what this run wrote (with a checkpoint, the
            # log and checkpoints stay, and --resume continues from the last one)
            _remove(self.log_path)
            if self.checkpoint_dir is not None and not self._had_checkpoint_dir:
                shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        for path in reversed(self._created):  # innermost first
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty


def check_creatable(folder: Path, flag: str) -> None:
    """One line, exit 2, when ``folder`` cannot be written: a file stands where it or one
    of its parents should be, or its first existing parent refuses new folders (checked
    by creating and removing an empty folder there). Writes nothing that stays."""
    existing = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    if existing is None:
        return
    if not existing.is_dir():
        if existing == folder:
            raise fail(f"{flag} {folder} is a file; give a folder")
        raise fail(f"{flag} {folder}: {existing} is a file, not a folder; choose another {flag}")
    if existing == folder:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise fail(f"{flag} {folder}: not writable; choose another {flag}")
        return
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sae-lens-write-check-", dir=existing))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise fail(
            f"{flag} {folder}: cannot create folders in {existing} ({reason}); "
            f"choose another {flag}"
        ) from exc


@contextlib.contextmanager
def staged_folder(folder: Path, last: str = "cfg.json") -> Iterator[Path]:
    """A hidden temporary folder inside ``folder`` (beside it while ``folder`` does not
    exist) to write into. On success its files move into ``folder`` (created now), each
    with ``os.replace`` (atomic on one filesystem), files named ``last`` last; on failure
    it is removed and ``folder`` is as it was: no half-written or empty folder is left."""
    parent = next(p for p in (folder, *folder.parents) if p.is_dir())
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{folder.name}-", dir=parent))
    try:
        yield tmp
        files = sorted((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: p.name == last)
        for src in files:
            dst = folder / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def load_saved_sae(folder: Path) -> Any:
    """``SAE.load_from_disk`` with one-line errors naming the file at fault."""
    if not folder.is_dir():
        raise fail(f"PATH {folder}: no such folder")
    missing = [n for n in ("cfg.json", "sae_weights.safetensors") if not (folder / n).is_file()]
    if missing:
        raise fail(
            f"PATH {folder} holds no trained SAE (missing {', '.join(missing)}); give "
            "the output folder of `sae-lens train` or `sae-lens demo`"
        )
    cfg_path = folder / "cfg.json"
    try:
        architecture = json.loads(cfg_path.read_text())["architecture"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise fail(
            f"{cfg_path}: not a valid SAE config ({one_line(exc)}); is it truncated?"
        ) from exc
    from sae_lens import SAE
    from sae_lens.registry import SAE_CLASS_REGISTRY

    if architecture not in SAE_CLASS_REGISTRY:
        raise fail(
            f"{cfg_path}: architecture {architecture!r} is not registered here; install the "
            "plugin that provides it (see `sae-lens plugins`)"
        )
    try:
        return SAE.load_from_disk(folder)
    except Exception as exc:
        weights = folder / "sae_weights.safetensors"
        reason = f"{type(exc).__name__}: {one_line(exc)}"
        if _readable_safetensors(weights):
            raise fail(
                f"{weights}: its tensors do not fit the {architecture} SAE that {cfg_path} "
                f"describes ({reason}); the weights and cfg.json come from different SAEs"
            ) from exc
        raise fail(f"{weights}: cannot be loaded ({reason}); is it truncated?") from exc


def _readable_safetensors(path: Path) -> bool:
    """Whether ``path`` is a complete safetensors file (header and every tensor)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                f.get_tensor(key)
    except Exception:
        return False
    return True


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON through a temp file (atomic replace)."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return obj.tolist()
    return str(obj)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``training_log.jsonl``; a line that is not JSON is one line, exit 2."""
    return [record for _, record in read_log_lines(path)]


def read_log_lines(path: Path, *, torn_tail_ok: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """Each non-empty line of the log ``path`` (none if it does not exist) with its record.
    ``torn_tail_ok``: a last line that is not JSON (the run was killed while writing it) is
    dropped; any other such line is one line, exit 2, naming the file and line."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    pairs = []
    for number, line in enumerate(lines, 1):
        try:
            pairs.append((line, json.loads(line)))
        except json.JSONDecodeError as exc:
            if torn_tail_ok and number == len(lines):
                break
            raise fail(f"{path}: line {number} is not valid JSON ({one_line(exc)})") from exc
    return pairs
