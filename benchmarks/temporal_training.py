"""Benchmark-only training of ``temporal_consistency`` SAEs (not part of the plugin).

- :func:`train_together` trains several SAEs in lockstep on the *same* stream of
  window-shuffled batches through upstream's ``SAETrainer`` (one pass over the data for
  all of them), timing each SAE's step separately so that step-time ratios are measured
  under the same load. A block of ``lcm(windows)`` consecutive rows holds whole windows
  of every batch window (:func:`sae_lens_ext.data.windows.shared_window`), so SAEs with
  different ``temporal_window`` (and window-free ones such as upstream ``standard``)
  share one batch layout. :func:`train_on_sequences` trains one.
- Ablation over window size x loss coefficient, one call, one table (list of dict rows):
  on sequence activations (synthetic or a tensor) every grid point trains in lockstep
  (:func:`train_together`) next to an upstream ``standard`` baseline
  (:func:`run_ablation`); on language-model data, :func:`run_lm_ablation` trains the
  whole grid with upstream's ``MultiSAETrainingRunner``: one pass over the model's
  activations for all grid points (``activations_mixing_fraction=0``, context size and
  batch size multiples of every window).

Import it as ``benchmarks.temporal_training`` from the repository's root (or as
``temporal_training`` from a script in ``benchmarks/``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens_ext_plugins.temporal_consistency.metrics import evaluate_on_sequences

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


def grid_name(window: int, coefficient: float) -> str:
    return f"w{window}_c{coefficient:g}"


def _grid_configs(
    windows: Sequence[int], coefficients: Sequence[float], base: dict[str, Any]
) -> dict[str, Any]:
    from sae_lens_ext_plugins.temporal_consistency.sae import TemporalConsistencyTrainingSAEConfig

    if not windows or not coefficients:
        raise ValueError("run_ablation: give at least one window and one coefficient")
    return {
        grid_name(w, c): TemporalConsistencyTrainingSAEConfig(
            **{**base, "temporal_window": int(w), "temporal_coefficient": float(c)}
        )
        for w in windows
        for c in coefficients
    }


def run_ablation(
    windows: Sequence[int],
    coefficients: Sequence[float],
    sequences: Any,
    *,
    eval_sequences: Any | None = None,
    sae_config: dict[str, Any] | None = None,
    training_steps: int = 500,
    batch_size: int = 1024,
    lr: float = 3e-4,
    seed: int = 0,
    baseline: bool = True,
    max_lag: int = 1,
) -> list[dict[str, Any]]:
    """Train a ``temporal_consistency`` SAE per (window, coefficient) on the same data.

    Args:
        windows, coefficients: the grid (``temporal_window`` x ``temporal_coefficient``).
        sequences: training sequences, ``(n_seq, seq_len, d_in)`` or ``SyntheticSequences``.
        eval_sequences: held-out sequences for the metrics (default: ``sequences``); with
            ground truth the table has ``mcc`` and ``autocorr_error``.
        sae_config: other training-config fields (``d_sae``, ``l1_coefficient``...;
            ``d_in`` defaults to the data's).
        baseline: also train upstream ``standard`` with the same ``l1_coefficient``.

    Returns:
        One dict per SAE: ``name, window, coefficient``, the metrics of
        :func:`~.metrics.evaluate_on_sequences`, ``n_steps``, ``step_ms`` and
        ``step_time_ratio`` (to ``standard`` when trained).
    """
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig

    acts = getattr(sequences, "activations", sequences)
    base = {"d_in": int(acts.shape[-1]), "d_sae": 4 * int(acts.shape[-1]), **(sae_config or {})}
    cfgs: dict[str, Any] = {}
    if baseline:
        cfgs["standard"] = StandardTrainingSAEConfig(
            d_in=base["d_in"], d_sae=base["d_sae"], l1_coefficient=base.get("l1_coefficient", 1.0)
        )
    cfgs.update(_grid_configs(windows, coefficients, base))
    results = train_together(
        cfgs, sequences, training_steps=training_steps, batch_size=batch_size, lr=lr, seed=seed
    )
    eval_on = eval_sequences if eval_sequences is not None else sequences
    reference = results["standard"].median_step_seconds if baseline else math.nan
    return [
        grid_row(
            name,
            cfgs[name],
            evaluate_on_sequences(result.sae, eval_on, max_lag=max_lag),
            n_steps=result.n_steps,
            step_ms=1e3 * result.median_step_seconds,
            step_time_ratio=result.median_step_seconds / reference,
        )
        for name, result in results.items()
    ]


def grid_row(name: str, cfg: Any, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One row of an ablation table: the SAE's name, window and coefficient, its metrics."""
    return {
        "name": name,
        "window": getattr(cfg, "temporal_window", None),
        "coefficient": getattr(cfg, "temporal_coefficient", None),
        **metrics,
        **extra,
    }


def run_lm_ablation(
    windows: Sequence[int],
    coefficients: Sequence[float],
    *,
    runner_config: dict[str, Any],
    sae_config: dict[str, Any] | None = None,
    n_eval_sequences: int = 32,
    max_lag: int = 1,
) -> list[dict[str, Any]]:
    """The grid on language-model activations, in one pass through upstream's
    ``MultiSAETrainingRunner``.

    Args:
        runner_config: ``MultiSAETrainingRunnerConfig`` fields (``model_name``,
            ``hook_names``, ``dataset_path``, ``context_size``, ``training_tokens``,
            ``train_batch_size_tokens``...). ``activations_mixing_fraction`` is forced to 0 and
            ``exclude_special_tokens`` to False; the context size and batch size must be
            multiples of ``lcm(windows)``.
        sae_config: training-config fields (``d_in`` and ``d_sae`` required).
        n_eval_sequences: held-out sequences read after training for the metrics.
    """
    from sae_lens.config import LoggingConfig
    from sae_lens.multi_sae_training_runner import (
        MultiSAETrainingRunner,
        MultiSAETrainingRunnerConfig,
    )

    from sae_lens_ext.api import (
        LossTermsMixin,
        batch_window,
        shared_window,
        validate_window_layout,
    )

    cfgs = _grid_configs(windows, coefficients, dict(sae_config or {}))
    rc = dict(runner_config)
    validate_window_layout(
        shared_window([batch_window(cfg) for cfg in cfgs.values()]),
        batch_size=rc.get("train_batch_size_tokens", 4096),
        context_size=rc.get("context_size", 128),
    )
    rc.update(activations_mixing_fraction=0.0, exclude_special_tokens=False)
    rc.setdefault("logger", LoggingConfig(log_to_wandb=False))
    rc.setdefault("checkpoint_path", None)
    if rc.get("output_path") is not None:
        rc["output_path"] = str(Path(rc["output_path"]))
    runner = MultiSAETrainingRunner(MultiSAETrainingRunnerConfig(saes=cfgs, **rc))
    saes = runner.run()
    eval_acts = held_out_sequences(runner, n_eval_sequences)
    return [
        grid_row(
            name,
            cfgs[name],
            evaluate_on_sequences(sae, eval_acts, max_lag=max_lag),
            n_steps=sae.guard.steps if isinstance(sae, LossTermsMixin) else 0,
        )
        for name, sae in saes.items()
    ]


def held_out_sequences(runner: Any, n: int) -> Any:
    """``n`` sequences of activations the runner's store reads after training."""
    import torch

    store = runner.activations_store
    hook = next(iter(runner.cfg.hook_names_per_sae.values()))
    seqs: list[torch.Tensor] = []
    with torch.no_grad():
        while sum(s.shape[0] for s in seqs) < n:
            tokens = store.get_batch_tokens()
            seqs.append(store.get_multi_hook_activations(tokens)[hook].float().cpu())
    return torch.cat(seqs)[:n]
