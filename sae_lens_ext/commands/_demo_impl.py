"""The body of ``sae-lens demo`` (heavy imports here, not in ``demo.py``)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from sae_lens_ext.commands._errors import (
    CliError,
    fail,
    holds_trained_sae,
    one_line,
    refuse_trained,
)

TEMPORAL = "temporal_consistency"
#: Demo settings per architecture, applied before ``--set`` (chosen by measuring, see docs/cli.md).
DEMO_DEFAULTS: dict[str, dict[str, Any]] = {
    "standard": {"l1_coefficient": 0.5},
    "freq_ordered": {"l1_coefficient": 0.5},
    TEMPORAL: {"l1_coefficient": 0.8, "temporal_coefficient": 0.1, "temporal_window": 4},
}
DEMO_LR = 4e-3
DEFAULT_SAMPLES = 1_000_000
DEFAULT_TEMPORAL_SAMPLES = 800_000
SEQ_LEN = 64


class ResumableWindows:
    """Wraps the plugin's ``WindowShuffledBatches`` with ``state_dict``/``load_state_dict``
    (its generator state, epoch, current shuffled windows and cursor)."""

    def __init__(self, batches: Any) -> None:
        self.batches = batches

    def __iter__(self) -> ResumableWindows:
        return self

    def __next__(self) -> Any:
        return next(self.batches)

    def state_dict(self) -> dict[str, Any]:
        b = self.batches
        return {
            "generator": b.generator.get_state(),
            "epoch": b.epoch,
            "windows": b._windows,
            "cursor": b._cursor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        b = self.batches
        b.generator.set_state(state["generator"])
        b.epoch, b._windows, b._cursor = state["epoch"], state["windows"], state["cursor"]


def parse_overrides(items: tuple[str, ...], cfg_cls: type[Any]) -> dict[str, Any]:
    import yaml

    names = {f.name for f in fields(cfg_cls)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise fail(f"--set {item!r}: expected FIELD=VALUE, e.g. --set l1_coefficient=2")
        if key not in names:
            raise fail(
                f"--set {key}: not a field of {cfg_cls.__name__}; fields: "
                f"{', '.join(sorted(names))}"
            )
        out[key] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def demo(
    *,
    architecture: str,
    output: str,
    samples: int | None,
    d_in: int,
    n_features: int,
    d_sae: int,
    batch_size: int,
    lr: float | None,
    seed: int,
    overrides: tuple[str, ...],
    eval_samples: int,
    n_checkpoints: int,
    resume: bool,
    overwrite: bool,
    log_every: int,
    progress: str,
    device: str,
    threads: int,
) -> int:
    if not overwrite and holds_trained_sae(Path(output)):  # before the slow imports
        refuse_trained(Path(output), "--output")
    import torch
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    from sae_lens_ext.commands._run import (
        CHECKPOINTS_DIR,
        TRAINING_LOG,
        CliTrainer,
        InterruptFlag,
        RunLogger,
        TrainingInterrupted,
        prepare_output,
        run_training,
    )
    from sae_lens_ext.commands._train_impl import check_device

    t0 = time.perf_counter()
    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        raise fail(
            f"unknown --architecture {architecture!r}; registered: "
            f"{', '.join(sorted(SAE_TRAINING_CLASS_REGISTRY))}"
        )
    check_device("device", device)
    if threads:
        torch.set_num_threads(threads)
    sae_cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[architecture]
    sae_fields = {f.name for f in fields(cfg_cls)}
    settings = {k: v for k, v in DEMO_DEFAULTS.get(architecture, {}).items() if k in sae_fields}
    settings.update(parse_overrides(overrides, cfg_cls))
    temporal = architecture == TEMPORAL
    samples = samples or (DEFAULT_TEMPORAL_SAMPLES if temporal else DEFAULT_SAMPLES)
    steps = max(1, samples // batch_size)
    if architecture == "freq_ordered" and "ordering_warm_up_steps" not in settings:
        settings["ordering_warm_up_steps"] = steps // 4  # the 1000-step default outlasts the demo
    out = Path(output)
    checkpoint_dir = out / CHECKPOINTS_DIR
    resume_from = prepare_output(
        out, checkpoint_dir, overwrite=overwrite, resume=resume, flag="--output"
    )

    torch.manual_seed(seed)
    try:
        sae_cfg = cfg_cls(d_in=d_in, d_sae=d_sae, device=device, **settings)
    except (TypeError, ValueError) as exc:
        raise fail(f"SAE config: {one_line(exc)} (change it with --set FIELD=VALUE)") from exc
    data: Any
    if temporal:
        data, window_data = _temporal_data(sae_cfg, n_features, d_in, batch_size, seed, samples)
    else:
        data, window_data = _synthetic_data(n_features, d_in, batch_size, seed, device)
    sae = sae_cls(sae_cfg)
    sae.to(device)
    lr = lr or DEMO_LR
    trainer_cfg = SAETrainerConfig(
        total_training_samples=samples,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=steps // 20,
        device=device,
        n_checkpoints=n_checkpoints,
        checkpoint_path=str(checkpoint_dir),
        dead_feature_window=max(10, steps // 10),
        feature_sampling_window=max(20, steps // 5),
        logger=LoggingConfig(log_to_wandb=False),
    )
    interrupt = InterruptFlag()
    run_logger = RunLogger(out / TRAINING_LOG, samples, batch_size, log_every, progress)
    trainer = CliTrainer(
        cfg=trainer_cfg, sae=sae, data_provider=data, run_logger=run_logger, interrupt=interrupt
    )

    def before_fit() -> None:
        if resume_from is not None:
            print(f"Resuming from {resume_from}", file=sys.stderr)
            trainer.resume_from(resume_from)

    print(
        f"Training a {architecture} SAE (d_in {d_in}, d_sae {d_sae}) on {samples:,} "
        f"synthetic {'tokens of sequences' if temporal else 'samples'} "
        f"({n_features} ground-truth features)",
        file=sys.stderr,
    )
    try:
        sae = run_training(trainer, interrupt, before_fit)
    except TrainingInterrupted as exc:
        raise CliError(str(exc), 130) from exc
    train_s = time.perf_counter() - t0

    torch.manual_seed(seed + 1)  # evaluation draws its own data
    if temporal:
        metrics = _temporal_metrics(sae, window_data, n_features, d_in, seed)
    else:
        metrics = _synthetic_metrics(sae, window_data, eval_samples, batch_size, architecture)
    metrics.update(
        {
            "architecture": architecture,
            "d_in": d_in,
            "d_sae": d_sae,
            "n_features": n_features,
            "training_samples": trainer.n_training_samples,
            "training_steps": trainer.n_training_steps,
            "seed": seed,
            "lr": lr,
            "sae_config": {k: v for k, v in settings.items()},
            "train_time_s": round(train_s, 2),
        }
    )
    _save(out, sae, trainer, metrics, window_data, temporal)
    metrics["total_time_s"] = round(time.perf_counter() - t0, 2)
    _rewrite_time(out, metrics)
    print_results(out, metrics)
    return 0


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def _synthetic_data(
    n_features: int, d_in: int, batch_size: int, seed: int, device: str
) -> tuple[Any, Any]:
    from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig
    from sae_lens.synthetic.training import SyntheticActivationIterator

    model = SyntheticModel(
        SyntheticModelConfig(num_features=n_features, hidden_dim=d_in, seed=seed), device=device
    )
    model.feature_dict.eval()
    iterator = SyntheticActivationIterator(
        model.feature_dict, model.activation_generator, batch_size=batch_size
    )
    return iterator, model


def _temporal_data(
    sae_cfg: Any, n_features: int, d_in: int, batch_size: int, seed: int, samples: int
) -> tuple[Any, Any]:
    from sae_lens_ext_plugins.temporal_consistency.data import (
        SyntheticSequenceConfig,
        SyntheticSequences,
    )

    window = int(getattr(sae_cfg, "temporal_window", 1) or 1)
    if batch_size % window:
        raise fail(
            f"--batch-size {batch_size} is not a multiple of temporal_window {window}; "
            f"use --batch-size {batch_size - batch_size % window or window}"
        )
    n_sequences = max(64, min(1024, math.ceil(samples / SEQ_LEN / 4)))  # ~4 epochs
    sequences = SyntheticSequences(
        SyntheticSequenceConfig(
            num_features=n_features, d_in=d_in, seq_len=SEQ_LEN, n_sequences=n_sequences, seed=seed
        )
    )
    return ResumableWindows(sequences.batches(window, batch_size, seed)), sequences


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------
def _synthetic_metrics(
    sae: Any, model: Any, eval_samples: int, batch_size: int, architecture: str
) -> dict[str, Any]:
    import torch
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    result = eval_sae_on_synthetic_data(
        sae,
        model.feature_dict,
        model.activation_generator,
        num_samples=eval_samples,
        batch_size=4096,
    )
    metrics: dict[str, Any] = {
        "mcc": result.mcc,
        "explained_variance": result.explained_variance,
        "l0": result.sae_l0,
        "true_l0": result.true_l0,
        "dead_latents": result.dead_latents,
        "uniqueness": result.uniqueness,
        "shrinkage": result.shrinkage,
        "classification": {
            k: getattr(result.classification, k)
            for k in ("precision", "recall", "f1_score", "accuracy")
        },
    }
    with torch.no_grad():
        acts = model.sample(eval_samples)
    try:
        from sae_lens_ext_plugins.freq_ordered.metrics import (
            measure_frequencies,
            ordering_spearman,
            prefix_explained_variance,
        )
    except ImportError:  # the freq_ordered plugin is not installed
        return metrics
    freqs = measure_frequencies(sae, acts)
    metrics["ordering_spearman"] = ordering_spearman(freqs)
    metrics["prefix_explained_variance"] = {
        str(k): v for k, v in prefix_explained_variance(sae, acts).items()
    }
    metrics["_frequencies"] = freqs
    return metrics


def _temporal_metrics(
    sae: Any, train_sequences: Any, n_features: int, d_in: int, seed: int
) -> dict[str, Any]:
    from sae_lens_ext_plugins.temporal_consistency.data import (
        SyntheticSequenceConfig,
        SyntheticSequences,
    )
    from sae_lens_ext_plugins.temporal_consistency.metrics import evaluate_on_sequences

    held_out = SyntheticSequences(
        SyntheticSequenceConfig(
            num_features=n_features, d_in=d_in, seq_len=SEQ_LEN, n_sequences=128, seed=seed + 1
        ),
        feature_dict=train_sequences.feature_dict,
    )
    return dict(evaluate_on_sequences(sae, held_out, max_lag=1))


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------
def _save(
    out: Path, sae: Any, trainer: Any, metrics: dict[str, Any], data: Any, temporal: bool
) -> None:
    from sae_lens.constants import SPARSITY_FILENAME
    from safetensors.torch import save_file

    from sae_lens_ext.commands._plotting import plot_training_curves
    from sae_lens_ext.commands._run import (
        METRICS_FILENAME,
        TRAINING_LOG,
        read_log,
        staging,
        write_json,
    )

    freqs = metrics.pop("_frequencies", None)
    with staging(out) as tmp:
        sae.save_inference_model(tmp)
        save_file({"sparsity": trainer.log_feature_sparsity}, tmp / SPARSITY_FILENAME)
        write_json(tmp / METRICS_FILENAME, metrics)
        if not temporal:
            data.save(tmp / "synthetic_model")
        plots = tmp / "plots"
        plot_training_curves(
            {metrics["architecture"]: read_log(out / TRAINING_LOG)}, plots / "training_curves.png"
        )
        if freqs is not None:
            from sae_lens_ext_plugins.freq_ordered.plots import plot_frequencies

            plot_frequencies(freqs, plots)


def _rewrite_time(out: Path, metrics: dict[str, Any]) -> None:
    from sae_lens_ext.commands._run import METRICS_FILENAME, write_json

    write_json(out / METRICS_FILENAME, metrics)


ROWS = [
    ("mcc", "ground-truth MCC", "{:.3f}"),
    ("explained_variance", "explained variance", "{:.3f}"),
    ("l0", "L0 (true L0 {true_l0:.1f})", "{:.1f}"),
    ("dead_latents", "dead latents", "{}"),
    ("ordering_spearman", "ordering quality: Spearman(index, frequency), -1 is perfect", "{:.3f}"),
    (
        "mean_autocorrelation",
        "latent lag-1 autocorrelation (true {true_mean_autocorrelation:.3f})",
        "{:.3f}",
    ),
    ("autocorr_error", "autocorrelation error vs ground truth", "{:.3f}"),
    ("redundant_pairs", "redundant latent pairs (corr > 0.9)", "{}"),
]


def print_results(out: Path, metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{metrics['architecture']} SAE on synthetic data "
        f"({metrics['training_samples']:,} samples, {metrics['train_time_s']:.0f} s)",
        min_width=74,
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label, fmt in ROWS:
        if key in metrics and metrics[key] is not None:
            try:
                label = label.format(**metrics)
            except (KeyError, ValueError):
                label = label.split(" (")[0]
            table.add_row(label, fmt.format(metrics[key]))
    for fraction, value in (metrics.get("prefix_explained_variance") or {}).items():
        if float(fraction) < 1:
            table.add_row(
                f"explained variance of the first {float(fraction):.0%} latents", f"{value:.3f}"
            )
    console = Console(width=100)
    console.print(table)
    console.print(f"SAE, metrics.json, training_log.jsonl and plots/ written to {out}/")
