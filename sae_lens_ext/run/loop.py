"""The one training loop of ``sae-lens train`` and ``sae-lens demo``.

:class:`TrainingLoop` drives upstream's ``SAETrainer`` through its public seams, as
upstream's ``MultiSAETrainer`` does (``step``, ``maybe_reset_sparsity``,
``full_sparsity_window_log``, ``set_final_sae_metadata``, ``save_checkpoint``,
``load_trainer_state``), and adds, explicitly and in this order after each step:

1. the architecture's after-step work with the optimizer in hand, through the SAE's
   after-step driver (:func:`sae_lens_ext.training.after_step.drive_from_loop`: resampling, a
   periodic permutation; a returned permutation is applied to the trainer's per-latent
   firing counters too);
2. that driver's guard (:class:`~sae_lens_ext.training.after_step.TrainingGuard`: device-side
   every step, checked on logging steps);
3. logging (JSONL, progress, wandb when asked; before the step, the SAE's loss terms are
   told whether it is a logging step: :func:`~sae_lens_ext.training.loss_terms.set_logging_step`),
   checkpoints at step boundaries (with
   the RNG state, the data provider's ``state_dict`` and the guard's state, written to a
   temp folder and renamed), and Ctrl-C at a step boundary.

Several SAEs train in lock-step on one activation stream (``lockstep=``, as upstream's
``MultiSAETrainer`` steps several ``SAETrainer``s on each batch): this loop reads each
batch and hands it to the other loops' :meth:`TrainingLoop.train_step` after its own; the
normalisation estimate is made once and shared; each SAE keeps its own after-step work,
guards and log.

Under ``torchrun`` the same loop runs on every rank (see :mod:`sae_lens_ext.run.replicas`
for what keeps the replicas identical): guards and replica checks run on the same steps
everywhere (every ``check_every`` steps and the last), a Ctrl-C on any rank stops all
ranks at the same step, and rank 0 alone writes checkpoints (holding every rank's data
position) while the others wait.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from sae_lens_ext.errors import TrainingInterrupted, fail
from sae_lens_ext.run.progress import RunLogger
from sae_lens_ext.run.replicas import ReplicaSync
from sae_lens_ext.training import distributed
from sae_lens_ext.training.after_step import TrainingGuard, drive_from_loop
from sae_lens_ext.training.loss_terms import set_logging_step
from sae_lens_ext.training.optim import permute_latent_state

LOOP_STATE_FILENAME = "loop_state.pt"
#: What a resumed run does not reproduce when wandb evaluations read the training data.
WANDB_EVAL_RESUME_NOTE = (
    "with --log_to_wandb True the periodic evaluations read the training data source and "
    "a resumed run does not replay them, so its batches differ from an uninterrupted run's"
)


class InterruptFlag:
    """First Ctrl-C (or SIGTERM) asks for a stop at the next step boundary; a second one quits."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if not distributed.is_main():
            return  # rank 0 says it
        print(
            "\nInterrupt: stopping after this step (Ctrl-C again to quit now)",
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


class _Interruptible(Iterator[torch.Tensor]):
    """Batches of ``data`` that stop (no checkpoint: nothing trained yet) on Ctrl-C."""

    def __init__(self, data: Iterator[torch.Tensor], interrupt: InterruptFlag) -> None:
        self.data, self.interrupt = data, interrupt

    @override
    def __next__(self) -> torch.Tensor:
        if self.interrupt.requested:
            raise TrainingInterrupted(0, None)
        return next(self.data)


class LockstepData(Iterator[torch.Tensor]):
    """The ``data`` of a loop stepped in lock-step by another: it never reads a batch."""

    @override
    def __next__(self) -> torch.Tensor:
        raise RuntimeError("a loop in lock-step gets each batch from the loop that leads it")


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


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random: initialisation and shuffling then repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingLoop:
    """Train ``trainer.sae`` on ``data`` (see the module docstring).

    Args:
        trainer: upstream ``SAETrainer`` (its ``data_provider`` is not read; ``data`` is).
        data: iterator of ``(batch, d_in)`` activations; a ``state_dict()`` /
            ``load_state_dict()`` pair, if it has one, goes into checkpoints.
        logger: JSONL log and progress display.
        interrupt: the Ctrl-C flag (installed by :meth:`run`).
        check_every: under torchrun, guards and replica checks run every this many steps
            (default: the logger's ``log_every``); in one process they run whenever the
            logger makes a record.
        lockstep: loops of other SAEs (built on :class:`LockstepData`) trained on this
            loop's batches, one step each after this loop's; the run's length is this
            loop's. They keep no checkpoints and do not resume; :meth:`run` finishes this
            loop only: call each one's :meth:`finish` for its SAE.
    """

    def __init__(
        self,
        trainer: Any,
        data: Iterator[torch.Tensor],
        *,
        logger: RunLogger | None = None,
        interrupt: InterruptFlag | None = None,
        check_every: int | None = None,
        lockstep: Sequence[TrainingLoop] = (),
    ) -> None:
        self.trainer, self.sae, self.cfg = trainer, trainer.sae, trainer.cfg
        self.data, self.logger = data, logger
        self.interrupt = interrupt or InterruptFlag()
        self.replicas = ReplicaSync(trainer)
        self.stop = distributed.StopAgreement()
        self.check_every = check_every or (logger.log_every if logger is not None else 50)
        self.after_step = drive_from_loop(self.sae)  # after-step work and the guard
        self.thresholds = list(trainer.checkpoint_thresholds)  # upstream's schedule
        self.last_checkpoint: Path | None = None
        self.last_record: dict[str, Any] = {}
        self.first_step_at: float | None = None  # time.perf_counter() when training began
        self._resume_rng: dict[str, Any] | None = None
        self.lockstep = list(lockstep)
        if self.lockstep and any(lp.cfg.checkpoint_path for lp in [self, *self.lockstep]):
            raise ValueError("loops in lock-step keep no checkpoints: set checkpoint_path=None")

    @property
    def guard(self) -> TrainingGuard:
        """The SAE's one guard (its after-step driver's)."""
        return self.after_step.guard

    # --- resume ------------------------------------------------------------------------
    def resume_from(self, checkpoint: Path) -> None:
        """Restore trainer, SAE, data, guard and RNG state from ``checkpoint``."""
        self.trainer.load_trainer_state(checkpoint)
        self.sae.load_weights_from_checkpoint(checkpoint)
        self.thresholds = [t for t in self.thresholds if t >= self.trainer.n_training_samples]
        state = torch.load(checkpoint / LOOP_STATE_FILENAME, weights_only=False)
        data_state = self._rank_data_state(state, checkpoint)
        if data_state is not None:  # saved only by a source that has state_dict()
            self.data.load_state_dict(data_state)  # type: ignore[attr-defined]
        self.guard.load_state_dict(state["guard"])
        self._resume_rng = state["rng"]

    @staticmethod
    def _rank_data_state(state: dict[str, Any], checkpoint: Path) -> Any:
        """This rank's data position in a checkpoint (written by as many processes)."""
        by_rank = state.get("data_by_rank", [state.get("data")])
        if len(by_rank) != distributed.world_size():
            raise fail(
                f"--resume: {checkpoint} was written by {len(by_rank)} process(es), each with "
                f"its own data position; resume with {len(by_rank)} (torchrun "
                f"--nproc_per_node {len(by_rank)})"
            )
        return by_rank[distributed.rank()]

    # --- the loop --------------------------------------------------------------------------
    def run(self, resume_from: Path | None = None) -> Any:
        """Train to ``total_training_samples``; return the SAE (scaling folded in)."""
        if resume_from is not None and self.lockstep:
            raise ValueError("loops in lock-step keep no checkpoints to resume from")
        with self.interrupt:
            if resume_from is not None:
                if distributed.is_main():
                    note = self.resume_note()
                    print(f"Resuming from {resume_from}{f' ({note})' if note else ''}",
                          file=sys.stderr)  # fmt: skip
                self.resume_from(resume_from)
            for loop in [self, *self.lockstep]:
                loop.sae.to(loop.cfg.device)
            self.replicas.start()
            try:
                self.estimate_normalization()
                self.share_normalization()
                if self._resume_rng is not None:  # last: nothing may draw after this
                    set_rng_state(self._resume_rng)
                self._train_steps()
                return self.finish()
            finally:
                self.replicas.stop()

    def _train_steps(self) -> None:
        loops, now = [self, *self.lockstep], time.perf_counter()
        for loop in loops:
            loop.first_step_at = now
            if loop.logger is not None:
                loop.logger.start(loop.trainer.n_training_samples, loop.trainer.n_training_steps)
        try:
            while self.trainer.n_training_samples < self.cfg.total_training_samples:
                batch = next(self.data)
                for loop in loops:
                    loop.train_step(batch)
        finally:
            for loop in loops:
                if loop.logger is not None:
                    loop.logger.close()
                loop.stop.close()

    def share_normalization(self) -> None:
        """This loop's activation normalisation, given to the loops in lock-step."""
        scaler = self.trainer.activation_scaler
        for loop in self.lockstep:
            loop.trainer.activation_scaler.scaling_factor = scaler.scaling_factor
            loop.trainer.activation_scaler.whitening = scaler.whitening

    def estimate_normalization(self) -> None:
        """Upstream's activation normalisation estimate (as ``SAETrainer.fit`` does it),
        on batches that stop promptly on Ctrl-C."""
        trainer, sae_cfg = self.trainer, self.sae.cfg
        scaler, n = trainer.activation_scaler, self.cfg.n_batches_for_norm_estimate
        data: Iterator[torch.Tensor] = self.replicas.normalization_batches(
            _Interruptible(self.data, self.interrupt)
        )
        mode = sae_cfg.normalize_activations
        due = (mode == "expected_average_only_in" and scaler.scaling_factor is None) or (
            mode == "covariance_whitening" and scaler.whitening is None
        )
        if due and self.logger is not None:
            data = self.logger.counted(data, n, f"{mode} normalisation estimate")
        if mode == "expected_average_only_in" and scaler.scaling_factor is None:
            scaler.estimate_scaling_factor(
                d_in=sae_cfg.d_in, data_provider=data, n_batches_for_norm_estimate=n
            )
        elif mode == "covariance_whitening" and scaler.whitening is None:
            scaler.estimate_whitening(
                d_in=sae_cfg.d_in, data_provider=data, n_batches_for_norm_estimate=n
            )

    def train_step(self, batch: torch.Tensor | None = None) -> None:
        """One step on ``batch`` (default: the next batch of ``data``)."""
        trainer, replicas = self.trainer, self.replicas
        sparsity_log = trainer.maybe_reset_sparsity()
        batch = next(self.data) if batch is None else batch
        set_logging_step(self.sae, self.is_logging_step(batch.shape[0]))
        replicas.before_step()
        output = trainer.step(batch)
        replicas.after_step(batch.shape[0])
        self.after_optimizer_step()
        replicas.sync_buffers()
        self.guard.observe(
            trainer.n_training_steps,
            output.loss,
            output.sae_in,
            # the trainer just zeroed the counters of the latents that fired: no read of
            # the (batch, d_sae) activations
            fired=(trainer.n_forward_passes_since_fired == 0).any(),
            losses=output.losses,
        )
        self.log_to_wandb(output, sparsity_log)
        trainer.n_training_steps += 1
        record = self.logger.update(trainer, output) if self.logger is not None else None
        if record is not None:
            self.last_record = record
        if self._check_due(record):
            self.check()
        if self.thresholds and trainer.n_training_samples > self.thresholds[0]:
            self.check()  # never checkpoint a diverged SAE
            self.save_checkpoint(str(trainer.n_training_samples))
            self.thresholds.pop(0)
        stop = self.stop.poll(self.interrupt.requested)
        if stop and trainer.n_training_samples < self.cfg.total_training_samples:
            self.check()
            checkpoint = self.save_checkpoint(str(trainer.n_training_samples))
            raise TrainingInterrupted(trainer.n_training_steps, checkpoint, self.resume_note())

    def resume_note(self) -> str | None:
        """What a run resumed from this loop's checkpoints does not reproduce (``None``:
        it continues bit-identically)."""
        notes = [getattr(self.data, "resume_note", None)]
        if self.cfg.logger.log_to_wandb and self.trainer.evaluator is not None:
            notes.append(WANDB_EVAL_RESUME_NOTE)
        return "; ".join(n for n in notes if n) or None

    def is_logging_step(self, rows: int) -> bool:
        """Whether the step about to run on ``rows`` rows (this process's) is logged: a
        record of the logger (decided now, kept by it) or a wandb log step."""
        trainer = self.trainer
        step = trainer.n_training_steps + 1  # the logger's count once the step is done
        samples = trainer.n_training_samples + rows * self.replicas.world
        logged = self.logger is not None and self.logger.plan(step, samples)
        wandb = self.cfg.logger.log_to_wandb and distributed.is_main()
        return logged or (wandb and step % self.cfg.logger.wandb_log_frequency == 0)

    def _check_due(self, record: dict[str, Any] | None) -> bool:
        """One process: whenever a record was made. Several: on the same steps on every
        rank (collectives), every ``check_every`` steps and at the last step."""
        if not self.replicas.active:
            return record is not None
        trainer = self.trainer
        return (
            trainer.n_training_steps % self.check_every == 0
            or trainer.n_training_samples >= self.cfg.total_training_samples
        )

    def check(self) -> None:
        """The guards (over all ranks) and, under torchrun, that the replicas agree."""
        self.guard.synchronize()
        self.guard.check()
        self.replicas.check()

    def after_optimizer_step(self) -> None:
        """The architecture's after-step work; permute the trainer's per-latent state along
        with any latent permutation it applied."""
        permutation = self.after_step.after_optimizer_step(self.trainer.optimizer)
        if permutation is not None:
            self.replicas.compare_permutation(permutation)
            trainer = self.trainer
            permute_latent_state(
                [trainer.act_freq_scores, trainer.n_forward_passes_since_fired], permutation
            )

    def log_to_wandb(self, output: Any, sparsity_log: dict[str, Any]) -> None:
        """What ``SAETrainer.fit`` logs to wandb, from its public pieces (when asked)."""
        logger_cfg = self.cfg.logger
        if not logger_cfg.log_to_wandb or not distributed.is_main():
            return
        import wandb

        trainer, step = self.trainer, self.trainer.n_training_steps
        if sparsity_log:
            wandb.log(sparsity_log, step=step)
        if (step + 1) % logger_cfg.wandb_log_frequency == 0:
            log = trainer.build_train_step_log_dict(output, trainer.n_training_samples)
            wandb.log(log, step=step)
        every = logger_cfg.wandb_log_frequency * logger_cfg.eval_every_n_wandb_logs
        if trainer.evaluator is not None and (step + 1) % every == 0:
            self.sae.eval()
            paused = getattr(self.data, "paused", contextlib.nullcontext)  # a prefetcher
            with paused():
                metrics = trainer.evaluator(self.sae, self.data, trainer.activation_scaler)
            self.sae.train()
            wandb.log(metrics, step=step)

    def finish(self) -> Any:
        """After the last step: guards, the last sparsity window, folded scaling, metadata."""
        trainer, sae = self.trainer, self.sae
        self.guard.synchronize()
        self.guard.check_finished(trainer.n_training_steps)
        if self.cfg.logger.log_to_wandb and distributed.is_main():
            import wandb

            final = trainer.full_sparsity_window_log()
            if final:
                wandb.log(final, step=trainer.n_training_steps)
        scaler = trainer.activation_scaler
        if scaler.scaling_factor is not None:
            sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
            scaler.scaling_factor = None
        if scaler.whitening is not None:
            whitening = scaler.whitening
            sae.fold_activation_whitening(
                mean=whitening.mean,
                whitening_matrix=whitening.matrix,
                unwhitening_matrix=whitening.inverse_matrix,
            )
            scaler.whitening = None
        trainer.set_final_sae_metadata()
        if self.cfg.save_final_checkpoint:
            self.save_checkpoint(f"final_{trainer.n_training_samples}")
        return sae

    # --- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, name: str) -> Path | None:
        """Upstream's checkpoint plus this loop's state, written to a temp folder and
        renamed into place (a crash while saving never leaves a checkpoint --resume takes).
        Under torchrun every rank's data position is gathered and rank 0 writes."""
        if self.cfg.checkpoint_path is None:
            return None
        base = Path(self.cfg.checkpoint_path)
        state_dict = getattr(self.data, "state_dict", None)
        by_rank = distributed.gather_objects(state_dict() if callable(state_dict) else None)
        final = base / name
        if distributed.is_main():
            assert by_rank is not None
            self._write_checkpoint(base, name, by_rank)
        distributed.barrier()
        self.last_checkpoint = final
        return final

    def _write_checkpoint(self, base: Path, name: str, data_by_rank: list[Any]) -> None:
        tmp_name = f".tmp-{name}-{os.getpid()}"
        state = {
            "rng": rng_state(),
            "guard": self.guard.state_dict(),
            "data": data_by_rank[0],
            "data_by_rank": data_by_rank,
        }
        self.trainer.save_checkpoint(tmp_name, base_path=base)
        torch.save(state, base / tmp_name / LOOP_STATE_FILENAME)
        final = base / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(base / tmp_name, final)


def reconstruction_warning(record: dict[str, Any]) -> str | None:
    """A warning when the last logged batch's explained variance is <= 0."""
    ev = record.get("explained_variance")
    if ev is None or ev > 0:
        return None
    return (
        f"Warning: the SAE explains {ev:.3g} of the variance of its last batch (<= 0: it "
        "reconstructs nothing beyond the mean); normalise the activations "
        "(--normalize_activations expected_average_only_in) or lower the sparsity coefficient"
    )
