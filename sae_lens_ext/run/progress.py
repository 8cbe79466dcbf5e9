"""Progress display and the JSONL training log of a run.

Everything that reads a tensor's value (a host-device sync) happens here, on logging
steps only: every ``log_every`` steps, at the last step, and for plain progress lines
(every ``print_every`` steps or ``PRINT_SECONDS`` seconds, whichever comes first). The
training loop asks :meth:`RunLogger.plan` before each step, so that the step's loss terms
know it is logged (:attr:`~sae_lens_ext.training.loss_terms.LossContext.is_logging_step`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from typing_extensions import override

from sae_lens_ext.metrics import explained_variance

PRINT_SECONDS = 10.0
#: Records of ``training_log.jsonl`` per run when ``--log-every`` is not given.
LOG_RECORDS = 150
#: A phase before training (the normalisation estimate) says how far it is after this long.
FIRST_PRINT_SECONDS = 3.0


def default_log_every(total_samples: int, batch_size: int) -> int:
    """Steps between records when the user did not choose: about ``LOG_RECORDS`` records
    per run, and every step of a run under 225 steps (so a short run still draws curves)."""
    steps = max(1, -(-total_samples // batch_size))
    return max(1, round(steps / LOG_RECORDS))


class RunLogger:
    """Losses every ``log_every`` steps to a JSONL file; a rich bar on a TTY, plain lines otherwise.

    ``mode``: ``auto`` (bar if stderr is a terminal, else plain lines), ``bar``,
    ``plain`` or ``none``. Plain lines: about 20 per run, and at least one every
    ``PRINT_SECONDS`` seconds. ``log_every`` ``None``: :func:`default_log_every`.
    """

    def __init__(
        self,
        log_path: Path | None,
        total_samples: int,
        batch_size: int,
        log_every: int | None = None,
        mode: str = "auto",
    ) -> None:
        self.log_path = log_path
        self.total_samples = total_samples
        self.total_steps = max(1, -(-total_samples // batch_size))
        self.log_every = max(1, log_every or default_log_every(total_samples, batch_size))
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.print_every = max(1, self.total_steps // 20)
        self._progress: Any = None
        self._task: Any = None
        self._t0 = self._last_print = time.perf_counter()
        self._start_samples = 0
        self._planned: tuple[int, bool] | None = None
        self._metric_names: list[str] = []
        self.last_record: dict[str, Any] = {}

    def start(self, n_training_samples: int, n_training_steps: int) -> None:
        self._t0 = self._last_print = time.perf_counter()
        self._start_samples = n_training_samples
        if self.log_path is not None:
            truncate_log(self.log_path, n_training_steps)
        if self.mode == "bar":
            self._start_bar(n_training_samples)

    def _start_bar(self, completed: int) -> None:
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
            "train", total=self.total_samples, completed=completed, rate=0.0, losses=""
        )

    def counted(self, batches: Iterator[Any], total: int, what: str) -> Iterator[Any]:
        """``batches`` read by a phase before training (``total`` of them): it is
        announced, and in plain mode a line says how far it is after
        ``FIRST_PRINT_SECONDS`` and every ``PRINT_SECONDS`` (on a terminal, upstream's
        own bar shows it)."""
        if self.mode == "none":
            return batches
        print(f"{what}: reading {total:,} batches before the first step", file=sys.stderr)
        return batches if self.mode != "plain" else CountedBatches(batches, total, what)

    def rate(self, n_training_samples: int) -> float:
        elapsed = time.perf_counter() - self._t0
        return (n_training_samples - self._start_samples) / elapsed if elapsed > 0 else 0.0

    def is_logging_step(self, step: int, samples: int) -> bool:
        """Whether :meth:`update` will read tensor values at this (completed) step."""
        return (
            step % self.log_every == 0
            or samples >= self.total_samples
            or (self.mode == "plain" and self._print_due(step))
        )

    def plan(self, step: int, samples: int) -> bool:
        """Decide, before the step that completes ``step`` with ``samples`` samples runs,
        whether :meth:`update` will log it; :meth:`update` keeps the decision."""
        decision = self.is_logging_step(step, samples)
        self._planned = (step, decision)
        return decision

    def _print_due(self, step: int) -> bool:
        return (
            step % self.print_every == 0 or time.perf_counter() - self._last_print >= PRINT_SECONDS
        )

    def update(self, trainer: Any, output: Any) -> dict[str, Any] | None:
        """Log the step ``trainer`` just completed; return the record if one was made."""
        step, samples = trainer.n_training_steps, trainer.n_training_samples
        last = samples >= self.total_samples
        record = None
        planned = self._planned[1] if self._planned and self._planned[0] == step else None
        if planned if planned is not None else self.is_logging_step(step, samples):
            record = self.record(trainer, output)
            if self.log_path is not None and (step % self.log_every == 0 or last):
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
        if self._progress is not None:
            fields: dict[str, Any] = {"rate": self.rate(samples)}
            if record is not None:
                fields["losses"] = loss_text(record, self._metric_names)
            self._progress.update(self._task, completed=samples, **fields)
        elif self.mode == "plain" and record is not None and (last or self._print_due(step)):
            self._print_line(record)
        return record

    def _print_line(self, record: dict[str, Any]) -> None:
        samples, rate = record["samples"], record["samples_per_s"]
        eta = max(0.0, (self.total_samples - samples) / rate) if rate > 0 else float("nan")
        print(
            f"step {record['step']}/{self.total_steps} | {samples:,}/{self.total_samples:,} "
            f"samples ({100 * samples / self.total_samples:.0f}%) | {rate:,.0f} samples/s | "
            f"ETA {eta:.0f}s | {loss_text(record, self._metric_names)}",
            file=sys.stderr,
            flush=True,
        )
        self._last_print = time.perf_counter()

    @torch.no_grad()
    def record(self, trainer: Any, output: Any) -> dict[str, Any]:
        """The logged values of a step (reads tensors: logging steps only)."""
        record: dict[str, Any] = {
            "step": trainer.n_training_steps,
            "samples": trainer.n_training_samples,
            "time_s": round(time.perf_counter() - self._t0, 3),
            "samples_per_s": round(self.rate(trainer.n_training_samples), 1),
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "loss": float(output.loss),
        }
        for name, value in [*output.losses.items(), *output.metrics.items()]:
            if isinstance(value, int) and not isinstance(value, bool):
                record[name] = value  # a count (e.g. resampled latents so far)
            elif (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(
                value, float
            ):
                record[name] = float(value)
        self._metric_names = [n for n in output.metrics if n in record]
        acts = output.feature_acts
        if acts.is_sparse:  # a sparse step's codes (sae_lens_ext.training.sparse): count the entries
            record["l0"] = float((acts.coalesce().values() != 0).sum()) / max(acts.shape[0], 1)
        else:
            record["l0"] = float((acts != 0).float().sum(-1).mean())
        record["explained_variance"] = explained_variance(
            output.sae_in.float(), output.sae_out.float()
        )
        record["trainer_dead_latents"] = int(trainer.dead_neurons.sum())
        self.last_record = record
        return record

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class CountedBatches(Iterator[Any]):
    """Batches of a phase of ``total`` batches, with a plain progress line after
    ``FIRST_PRINT_SECONDS`` and then every ``PRINT_SECONDS`` seconds."""

    def __init__(self, batches: Iterator[Any], total: int, what: str) -> None:
        self.batches, self.total, self.what = batches, total, what
        self.done, self._t0 = 0, time.perf_counter()
        self._next_print = self._t0 + FIRST_PRINT_SECONDS

    @override
    def __next__(self) -> Any:
        batch = next(self.batches)
        self.done += 1
        now = time.perf_counter()
        if now >= self._next_print or (self.done == self.total and now - self._t0 > 1):
            elapsed = now - self._t0
            eta = elapsed / self.done * (self.total - self.done)
            print(
                f"{self.what}: {self.done:,}/{self.total:,} batches | {elapsed:.0f}s | "
                f"ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            self._next_print = now + PRINT_SECONDS
        return batch


def loss_text(record: dict[str, Any], metrics: list[str] | tuple[str, ...] = ()) -> str:
    """``loss 1.2 | mse 0.3 | l1 0.9 | my_metric 0.1 | L0 12.1``: the losses of a record and
    its step metrics named in ``metrics`` (those of loss terms and architectures), one line."""
    parts = [f"loss {record['loss']:.4g}"]
    parts += [
        f"{k.removesuffix('_loss')} {v:.3g}" for k, v in record.items() if k.endswith("_loss")
    ]
    parts += [f"{k} {record[k]:.3g}" for k in metrics if k in record and not k.endswith("_loss")]
    if "l0" in record:
        parts.append(f"L0 {record['l0']:.1f}")
    return " | ".join(parts)


def truncate_log(path: Path, max_step: int) -> None:
    """Drop log lines past ``max_step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    from sae_lens_ext.run.output import read_log_lines

    lines = read_log_lines(path, torn_tail_ok=True)  # a line cut off by a kill: dropped
    kept = [line for line, record in lines if record["step"] <= max_step]
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)
