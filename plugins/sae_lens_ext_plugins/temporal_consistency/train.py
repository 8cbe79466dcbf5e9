"""Train SAEs on sequence activations through upstream's ``SAETrainer``.

:func:`train_together` trains several SAEs in lockstep on the *same* stream of
window-shuffled batches (one pass over the data for all of them), timing each
SAE's step separately so that step-time ratios are measured under the same load.
A block of ``lcm(windows)`` consecutive rows holds whole windows of every batch
window (:func:`sae_lens_ext.windows.shared_window`), so SAEs with different
``temporal_window`` (and window-free ones such as upstream ``standard``) share one
batch layout.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sae_lens_ext.api import (
    WindowShuffledBatches,
    batch_window,
    mark_layout_served,
    shared_window,
)


@dataclass
class TrainResult:
    """A trained SAE, its loss history (every ``log_every`` steps) and step timings."""

    sae: Any
    history: list[dict[str, float]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    n_steps: int = 0

    @property
    def median_step_seconds(self) -> float:
        times = self.step_seconds[min(5, len(self.step_seconds) // 2) :]
        return statistics.median(times) if times else float("nan")


def train_together(
    cfgs: Mapping[str, Any],
    sequences: Any,
    *,
    training_steps: int,
    batch_size: int = 1024,
    lr: float = 3e-4,
    seed: int = 0,
    lr_scheduler_name: str = "constant",
    lr_warm_up_steps: int = 0,
    log_every: int = 10,
    device: str = "cpu",
) -> dict[str, TrainResult]:
    """Train one SAE per config on the same window-shuffled batches of ``sequences``.

    Args:
        cfgs: name -> training SAE config (any registered architecture).
        sequences: ``(n_seq, seq_len, d_in)`` tensor or :class:`~.data.SyntheticSequences`.
        training_steps: steps per SAE; must be >= 1 (a run of 0 steps is an error).
        batch_size: rows per batch; a multiple of every config's batch window.
        lr, lr_scheduler_name, lr_warm_up_steps: upstream ``SAETrainer`` settings
            (e.g. ``"cosineannealing"`` with warm-up).
    """
    from sae_lens.registry import get_sae_training_class

    if training_steps < 1:
        raise ValueError(
            f"training_steps={training_steps}: a run that trains 0 steps is an error, not a "
            "result; set training_steps >= 1"
        )
    if not cfgs:
        raise ValueError("train_together: give at least one config")
    acts = getattr(sequences, "activations", sequences)
    window = shared_window([batch_window(cfg) for cfg in cfgs.values()])
    provider = WindowShuffledBatches(acts, window, batch_size, seed=seed)
    trainers: dict[str, Any] = {}
    results: dict[str, TrainResult] = {}
    for i, (name, cfg) in enumerate(cfgs.items()):
        torch.manual_seed(seed + i)
        sae = get_sae_training_class(cfg.architecture())[0](cfg)
        mark_layout_served(sae)
        trainers[name] = make_trainer(
            sae,
            provider,
            training_steps,
            batch_size,
            device,
            lr_warm_up_steps,
            lr=lr,
            lr_scheduler_name=lr_scheduler_name,
        )
        results[name] = TrainResult(sae=sae)
    for step in range(training_steps):
        batch = next(provider)
        for name, trainer in trainers.items():
            start = time.perf_counter()
            output = trainer.step(batch)
            results[name].step_seconds.append(time.perf_counter() - start)
            trainer.n_training_steps += 1
            results[name].n_steps += 1
            if step % log_every == 0 or step == training_steps - 1:
                results[name].history.append(history_row(step, output))
    for trainer in trainers.values():
        trainer.set_final_sae_metadata()
        trainer.sae.eval()
    return results


def make_trainer(
    sae: Any,
    provider: Any,
    training_steps: int,
    batch_size: int,
    device: str,
    lr_warm_up_steps: int,
    *,
    lr: float,
    lr_scheduler_name: str,
) -> Any:
    """Upstream's ``SAETrainer`` for ``training_steps`` steps of ``batch_size`` rows."""
    from sae_lens.config import SAETrainerConfig

    from sae_lens_ext.api import make_trainer as upstream_trainer

    trainer_cfg = SAETrainerConfig(
        total_training_samples=training_steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name=lr_scheduler_name,
        lr_warm_up_steps=lr_warm_up_steps,
        device=device,
        dead_feature_window=max(1, training_steps // 4),
        feature_sampling_window=max(1, training_steps),
    )
    trainer = upstream_trainer(trainer_cfg, sae, provider)
    trainer.sae.to(device)
    return trainer


def history_row(step: int, output: Any) -> dict[str, float]:
    """One logged row of a training history: loss, each loss term and L0."""
    with torch.no_grad():
        row = {"step": step, "loss": float(output.loss)}
        row.update({k: float(v) for k, v in output.losses.items()})
        row["l0"] = float((output.feature_acts != 0).float().sum(-1).mean())
    return row


def train_on_sequences(cfg: Any, sequences: Any, **kwargs: Any) -> TrainResult:
    """Train one SAE (see :func:`train_together` for the keyword arguments)."""
    return train_together({"sae": cfg}, sequences, **kwargs)["sae"]
