"""Bodies of ``sae-lens evaluate`` and ``sae-lens plots``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae_lens_ext.commands._errors import fail, holds_trained_sae

COMPARED = (
    "mcc",
    "explained_variance",
    "l0",
    "dead_latents",
    "ordering_spearman",
    "mean_autocorrelation",
)


def evaluate(path: str, *, samples: int, seed: int, as_json: bool) -> int:
    folder = Path(path)
    if not holds_trained_sae(folder):
        raise fail(f"PATH {path} holds no trained SAE (cfg.json, sae_weights.safetensors)")
    import torch
    from sae_lens import SAE

    sae = SAE.load_from_disk(folder)
    torch.manual_seed(seed)
    if (folder / "synthetic_model").is_dir():
        metrics = _synthetic(sae, folder, samples)
    elif (folder / "runner_cfg.json").is_file():
        metrics = _language_model(sae, folder, samples)
    else:
        raise fail(
            f"PATH {path}: no synthetic_model/ or runner_cfg.json to tell what data to "
            "evaluate on; evaluate SAEs written by `sae-lens demo` or `sae-lens train`"
        )
    if as_json:
        print(json.dumps(metrics, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Evaluation of {folder} ({samples:,} fresh samples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console(width=100).print(table)
    return 0


def _synthetic(sae: Any, folder: Path, samples: int) -> dict[str, Any]:
    from sae_lens.synthetic import SyntheticModel

    from sae_lens_ext.commands._demo_impl import _synthetic_metrics

    model = SyntheticModel.load_from_disk(folder / "synthetic_model")
    metrics = _synthetic_metrics(sae, model, samples, 4096, sae.cfg.architecture())
    metrics.pop("_frequencies", None)
    return metrics


def _language_model(sae: Any, folder: Path, tokens: int) -> dict[str, Any]:
    from sae_lens.config import LanguageModelSAERunnerConfig
    from sae_lens.evals import EvalConfig, run_evals

    from sae_lens_ext.commands._train_impl import build_runner, check_devices, check_paths

    cfg = LanguageModelSAERunnerConfig.from_dict(
        json.loads((folder / "runner_cfg.json").read_text())
    )
    cfg.from_pretrained_path = None
    check_devices(cfg)
    check_paths(cfg)
    runner = build_runner(cfg)
    batches = max(1, tokens // (cfg.store_batch_size_prompts * cfg.context_size))
    eval_cfg = EvalConfig(
        n_eval_reconstruction_batches=batches,
        n_eval_sparsity_variance_batches=batches,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    metrics, _ = run_evals(
        sae=sae.to(cfg.device),
        activation_store=runner.activations_store,
        model=runner.model,
        eval_config=eval_cfg,
    )
    return {k.split("/")[-1]: v for k, v in metrics.items()}


def plots(runs: list[str], output: str) -> int:
    from sae_lens_ext.commands._plotting import plot_metrics_comparison, plot_training_curves

    logs: dict[str, list[dict[str, Any]]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for run in runs:
        folder = Path(run)
        log, met = folder / "training_log.jsonl", folder / "metrics.json"
        if not log.is_file() and not met.is_file():
            raise fail(
                f"RUN {run}: no training_log.jsonl or metrics.json; give folders written "
                "by `sae-lens train` or `sae-lens demo`"
            )
        name = folder.resolve().name
        if log.is_file():
            logs[name] = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        if met.is_file():
            metrics[name] = json.loads(met.read_text())
    out = Path(output)
    written = [plot_training_curves(logs, out / "training_curves.png")] if logs else []
    if metrics:
        written.append(plot_metrics_comparison(metrics, COMPARED, out / "metrics_comparison.png"))
    for path in written:
        print(path)
    return 0
