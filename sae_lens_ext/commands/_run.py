"""Training machinery shared by ``sae-lens train`` and ``sae-lens demo``.

Heavy (torch, sae_lens): import it inside command bodies only.

- :class:`CliTrainer` is upstream's ``SAETrainer`` with a progress display, a
  JSONL training log, Ctrl-C handled at a step boundary, atomic checkpoints that
  also hold the random-number-generator state, and :meth:`CliTrainer.resume_from`.
- :func:`prepare_output` / :func:`publish` guard and fill the output folder:
  nothing trained is overwritten without ``--overwrite`` and final files are
  moved in one by one with ``cfg.json`` last, so a half-written folder never
  looks like a trained SAE.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sae_lens.constants import SAE_CFG_FILENAME, TRAINER_STATE_FILENAME
from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training import sae_trainer as _sae_trainer_module
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_ext.commands._errors import FAILURE, fail, holds_trained_sae, refuse_trained

CHECKPOINTS_DIR = "checkpoints"
TRAINING_LOG = "training_log.jsonl"
RNG_STATE_FILENAME = "rng_state.pt"
DATA_STATE_FILENAME = "data_provider_state.pt"
METRICS_FILENAME = "metrics.json"
_TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------------------
# Output folder
# --------------------------------------------------------------------------------------
def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Finished checkpoints (temp folders of an interrupted save are ignored), oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [
        p
        for p in checkpoint_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / TRAINER_STATE_FILENAME).is_file()
    ]
    return sorted(
        found,
        key=lambda p: (
            torch.load(p / TRAINER_STATE_FILENAME, weights_only=False)["n_training_samples"],
            p.stat().st_mtime,
        ),
    )


def prepare_output(
    output: Path,
    checkpoint_dir: Path | None,
    *,
    overwrite: bool,
    resume: bool,
    flag: str = "--output_path",
) -> Path | None:
    """Check the output folder; return the checkpoint to resume from (``--resume``)."""
    if output.exists() and not output.is_dir():
        raise fail(f"{flag} {output} is a file; give a folder")
    if holds_trained_sae(output) and not overwrite:
        refuse_trained(output, flag)
    checkpoints = complete_checkpoints(checkpoint_dir) if checkpoint_dir is not None else []
    if resume:
        if not checkpoints:
            raise fail(
                f"--resume: no checkpoint in {checkpoint_dir}; run the command without --resume "
                "to start training"
            )
        return checkpoints[-1]
    if checkpoints and not overwrite:
        raise fail(
            f"{checkpoint_dir} holds checkpoints of an earlier run: add --resume to continue it, "
            "or --overwrite to start again"
        )
    if overwrite:
        if checkpoint_dir is not None and checkpoint_dir.is_dir():
            shutil.rmtree(checkpoint_dir)
        (output / TRAINING_LOG).unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    return None


@contextlib.contextmanager
def staging(output: Path) -> Iterator[Path]:
    """A temp folder inside ``output``; on success its files replace those in ``output``.

    Each file is moved with ``os.replace`` (atomic on one filesystem), ``cfg.json``
    last: an interrupted save never leaves a folder that looks like a trained SAE.
    """
    output.mkdir(parents=True, exist_ok=True)
    tmp = output / f"{_TMP_PREFIX}final-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        files = sorted(
            (p for p in tmp.rglob("*") if p.is_file()), key=lambda p: p.name == SAE_CFG_FILENAME
        )
        for src in files:
            dst = output / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# --------------------------------------------------------------------------------------
# Random-number-generator state (what makes resume bit-identical)
# --------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------
# Progress display and JSONL training log
# --------------------------------------------------------------------------------------
class RunLogger:
    """Losses every ``log_every`` steps to a JSONL file; a rich bar on a TTY, plain lines otherwise.

    ``mode``: ``auto`` (bar if stderr is a terminal, else plain lines), ``bar``,
    ``plain`` or ``none``. Plain lines are printed about 20 times per run.
    """

    def __init__(
        self,
        log_path: Path | None,
        total_samples: int,
        batch_size: int,
        log_every: int = 50,
        mode: str = "auto",
    ) -> None:
        self.log_path = log_path
        self.total_samples = total_samples
        self.total_steps = max(1, -(-total_samples // batch_size))  # fit() runs ceil(N / B) steps
        self.log_every = max(1, log_every)
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.print_every = max(self.log_every, self.total_steps // 20)
        self._progress: Any = None
        self._task: Any = None
        self._t0 = time.perf_counter()
        self._start_samples = 0
        self.last_record: dict[str, Any] = {}

    def start(self, n_training_samples: int, n_training_steps: int) -> None:
        self._t0 = time.perf_counter()
        self._start_samples = n_training_samples
        if self.log_path is not None:
            _truncate_log(self.log_path, n_training_steps)
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                TextColumn("{task.completed:,}/{task.total:,} samples"),
                TextColumn("{task.fields[rate]:,.0f} samples/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[losses]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train",
                total=self.total_samples,
                completed=n_training_samples,
                rate=0.0,
                losses="",
            )

    def rate(self, n_training_samples: int) -> float:
        elapsed = time.perf_counter() - self._t0
        return (n_training_samples - self._start_samples) / elapsed if elapsed > 0 else 0.0

    @torch.no_grad()
    def update(self, trainer: SAETrainer[Any, Any], output: TrainStepOutput) -> None:
        step, samples = trainer.n_training_steps, trainer.n_training_samples
        last = samples >= self.total_samples
        record = None
        if step % self.log_every == 0 or last:
            record = self._record(trainer, output)
            if self.log_path is not None:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
        if self._progress is not None:
            fields: dict[str, Any] = {"rate": self.rate(samples)}
            if record is not None:
                fields["losses"] = _loss_text(record)
            self._progress.update(self._task, completed=samples, **fields)
        elif self.mode == "plain" and (step % self.print_every == 0 or last):
            record = record or self._record(trainer, output)
            rate = record["samples_per_s"]
            eta = max(0.0, (self.total_samples - samples) / rate) if rate > 0 else float("nan")
            print(
                f"step {step}/{self.total_steps} | {samples:,}/{self.total_samples:,} samples "
                f"({100 * samples / self.total_samples:.0f}%) | {rate:,.0f} samples/s | "
                f"ETA {eta:.0f}s | {_loss_text(record)}",
                file=sys.stderr,
                flush=True,
            )

    def _record(self, trainer: SAETrainer[Any, Any], output: TrainStepOutput) -> dict[str, Any]:
        sae_in = output.sae_in.float()
        resid = (sae_in - output.sae_out.float()).pow(2).sum()
        total = (sae_in - sae_in.mean(0)).pow(2).sum()
        record: dict[str, Any] = {
            "step": trainer.n_training_steps,
            "samples": trainer.n_training_samples,
            "time_s": round(time.perf_counter() - self._t0, 3),
            "samples_per_s": round(self.rate(trainer.n_training_samples), 1),
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "loss": float(output.loss.item()),
        }
        for name, value in output.losses.items():
            record[name] = float(value.item() if isinstance(value, torch.Tensor) else value)
        acts = output.feature_acts
        if not acts.is_sparse:
            record["l0"] = float((acts > 0).float().sum(-1).mean().item())
        record["explained_variance"] = float(1 - resid / total) if total > 0 else float("nan")
        record["dead_latents"] = int(trainer.dead_neurons.sum().item())
        self.last_record = record
        return record

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _loss_text(record: dict[str, Any]) -> str:
    parts = [f"loss {record['loss']:.4g}"]
    parts += [
        f"{k.removesuffix('_loss')} {v:.3g}" for k, v in record.items() if k.endswith("_loss")
    ]
    if "l0" in record:
        parts.append(f"L0 {record['l0']:.1f}")
    return " | ".join(parts)


def _truncate_log(path: Path, max_step: int) -> None:
    """Drop log lines past ``max_step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= max_step
    ]
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------
class TrainingInterrupted(Exception):
    """Raised at a step boundary after Ctrl-C/SIGTERM, once the checkpoint is saved."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self.step = step
        self.checkpoint = checkpoint
        where = (
            f"checkpoint saved to {checkpoint}; rerun the same command with --resume"
            if checkpoint is not None
            else "no checkpoint saved (no checkpoint path)"
        )
        super().__init__(f"interrupted after step {step}: {where}")


class InterruptFlag:
    """First Ctrl-C (or SIGTERM) asks for a stop at the next step boundary; a second one quits."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nInterrupt: saving a checkpoint after this step (Ctrl-C again to quit now)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> InterruptFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _NoBar:
    """Stands in for tqdm inside ``SAETrainer.fit``: the CLI draws its own progress."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, *args: Any) -> None:
        pass

    def set_description(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------
class CliTrainer(SAETrainer[Any, Any]):
    """``SAETrainer`` with progress, a JSONL log, step-boundary checkpoints and resume.

    Upstream checkpoints inside a step (before ``n_training_steps`` is advanced)
    and without the RNG state; this trainer takes every checkpoint (periodic,
    Ctrl-C, final) after a step is complete, writes it to a temp folder and
    renames it into place, and stores the torch/numpy/python RNG state and the data
    provider's ``state_dict()`` (if it has one) so that a resumed run draws the same data
    as an uninterrupted one.
    """

    def __init__(
        self,
        *args: Any,
        run_logger: RunLogger | None = None,
        interrupt: InterruptFlag | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.run_logger = run_logger
        self.interrupt = interrupt
        self._thresholds = list(self.checkpoint_thresholds)
        self.checkpoint_thresholds = []  # upstream's in-step checkpoints: off
        self.last_checkpoint: Path | None = None

    def resume_from(self, checkpoint: Path) -> None:
        """Load SAE weights, optimizer/scheduler/counters and RNG state from ``checkpoint``."""
        self.load_trainer_state(checkpoint)
        self.sae.load_weights_from_checkpoint(checkpoint)
        self._thresholds = [t for t in self._thresholds if t >= self.n_training_samples]
        data_path = checkpoint / DATA_STATE_FILENAME
        if data_path.exists() and callable(getattr(self.data_provider, "load_state_dict", None)):
            self.data_provider.load_state_dict(torch.load(data_path, weights_only=False))
        rng_path = checkpoint / RNG_STATE_FILENAME
        self._resume_rng = torch.load(rng_path, weights_only=False) if rng_path.exists() else None

    def restore_rng(self) -> None:
        """Call last, right before :meth:`fit`, after anything else that draws random numbers."""
        state = getattr(self, "_resume_rng", None)
        if state is not None:
            set_rng_state(state)

    def fit(self) -> Any:
        if self.run_logger is not None:
            self.run_logger.start(self.n_training_samples, self.n_training_steps)
        original = _sae_trainer_module.tqdm
        _sae_trainer_module.tqdm = _NoBar  # type: ignore[assignment]
        try:
            return super().fit()
        finally:
            _sae_trainer_module.tqdm = original  # type: ignore[assignment]
            if self.run_logger is not None:
                self.run_logger.close()

    def _update_pbar(
        self, step_output: TrainStepOutput, pbar: Any, update_interval: int = 100
    ) -> None:
        # Called by fit() once a step is complete: the one clean place to checkpoint.
        if not torch.isfinite(step_output.loss):
            raise fail(
                f"training step {self.n_training_steps}: loss is "
                f"{step_output.loss.item()}; lower --lr or the loss coefficients",
                FAILURE,
            )
        if self.run_logger is not None:
            self.run_logger.update(self, step_output)
        if self._thresholds and self.n_training_samples > self._thresholds[0]:
            self.save_checkpoint(checkpoint_name=str(self.n_training_samples))
            self._thresholds.pop(0)
        if (
            self.interrupt is not None
            and self.interrupt.requested
            and self.n_training_samples < self.cfg.total_training_samples
        ):
            checkpoint = None
            if self.cfg.checkpoint_path is not None:
                self.save_checkpoint(checkpoint_name=str(self.n_training_samples))
                checkpoint = self.last_checkpoint
            raise TrainingInterrupted(self.n_training_steps, checkpoint)

    def save_checkpoint(
        self,
        checkpoint_name: str,
        base_path: Path | str | None = None,
        wandb_aliases: list[str] | None = None,
    ) -> None:
        base = base_path if base_path is not None else self.cfg.checkpoint_path
        if base is None:
            super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)
            return
        base = Path(base)
        tmp_name = f"{_TMP_PREFIX}{checkpoint_name}-{os.getpid()}"
        state = rng_state()  # before anything below could draw random numbers
        super().save_checkpoint(tmp_name, base, wandb_aliases)
        tmp = base / tmp_name
        torch.save(state, tmp / RNG_STATE_FILENAME)
        if callable(getattr(self.data_provider, "state_dict", None)):
            torch.save(self.data_provider.state_dict(), tmp / DATA_STATE_FILENAME)
        final = base / checkpoint_name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        self.last_checkpoint = final


def run_training(
    trainer: CliTrainer, interrupt: InterruptFlag, before_fit: Callable[[], None] | None = None
) -> Any:
    """Fit with Ctrl-C handled at step boundaries; RNG restored last when resuming."""
    with interrupt:
        if before_fit is not None:
            before_fit()
        trainer.restore_rng()
        return trainer.fit()
