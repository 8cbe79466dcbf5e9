"""``sae-lens evaluate`` and ``sae-lens plots``: re-evaluate a trained SAE, compare runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae_lens_ext.errors import fail, one_line
from sae_lens_ext.metrics import EvalData, Metric, metrics_dict
from sae_lens_ext.run.output import load_saved_sae

EVALUATION_FILENAME = "evaluation.json"


def evaluate(path: str, *, samples: int, seed: int, as_json: bool) -> int:
    """The body of ``sae-lens evaluate``."""
    from sae_lens_ext.synthetic import DATA_DIR, SyntheticModelData, load_demo_data

    folder = Path(path)
    sae = load_saved_sae(folder)
    if (folder / DATA_DIR).is_dir():
        metrics = _synthetic(sae, load_demo_data(folder / DATA_DIR), samples, seed)
    elif (folder / "synthetic_model").is_dir():  # demo folders of release 0.1.0
        metrics = _synthetic(sae, SyntheticModelData.load_files(folder), samples, seed)
    elif (folder / "runner_cfg.json").is_file():
        metrics = _language_model(sae, folder, samples)
    else:
        raise fail(
            f"PATH {path}: no {DATA_DIR}/ or runner_cfg.json to tell what data to evaluate on; "
            "evaluate SAEs written by `sae-lens demo` or `sae-lens train`"
        )
    from sae_lens_ext.run.output import write_json
    from sae_lens_ext.run.report import LABELS_KEY

    values = {"samples": samples, "seed": seed, **metrics_dict(metrics)}
    labels = {m.key: m.label or m.key for m in metrics if m.row() is not None}
    write_json(folder / EVALUATION_FILENAME, {**values, LABELS_KEY: labels})
    if as_json:
        print(json.dumps(values, indent=2, default=str))
        return 0
    from sae_lens_ext.run.report import print_table

    rows = [row for row in (m.row() for m in metrics) if row is not None]
    print_table(f"Evaluation of {folder} ({samples:,} fresh samples)", rows)
    return 0


def _synthetic(sae: Any, data: Any, samples: int, seed: int) -> list[Metric]:
    from sae_lens_ext.run.report import collect_metrics

    return collect_metrics(sae, data.eval_data(samples, seed))


def _language_model(sae: Any, folder: Path, tokens: int) -> list[Metric]:
    """SAE-Lens's ``run_evals`` on the model and data of the run, and every plugin's metrics
    on whole sequences of the same activations."""
    import torch
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    from sae_lens_ext.plugins import load_plugins
    from sae_lens_ext.run.lm import model_and_store

    cfg, model, store = model_and_store(json.loads((folder / "runner_cfg.json").read_text()))
    sae = sae.to(cfg.device)
    batches = max(1, tokens // (cfg.store_batch_size_prompts * cfg.context_size))
    eval_cfg = EvalConfig(
        n_eval_reconstruction_batches=batches,
        n_eval_sparsity_variance_batches=batches,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    values, _ = run_evals(
        sae, store, model, ActivationScaler(), eval_cfg, exclude_special_tokens=False
    )
    metrics = [
        Metric(key, value, f"{key.replace('_', ' ')} ({category.replace('_', ' ')})")
        for category, group in values.items()
        for key, value in (group.items() if isinstance(group, dict) else [(category, group)])
    ]
    sequences = []
    with torch.no_grad():
        while sum(s.shape[0] * s.shape[1] for s in sequences) < tokens:
            acts = store.get_activations(store.get_batch_tokens())
            sequences.append(acts.reshape(acts.shape[0], acts.shape[1], -1).float().cpu())
    data = EvalData(torch.cat(sequences), description=f"{cfg.model_name} {cfg.hook_name}")
    for contributed in load_plugins().hook.evaluation_metrics(sae=sae, data=data):
        metrics.extend(contributed or [])
    return metrics


def run_labels(folders: list[Path]) -> list[str]:
    """Short names that tell runs apart: the folder name, with as many parent folders as
    it takes to make every name unique."""
    parts = [f.resolve().parts for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise fail("RUN: the same folder is given twice")


def read_run(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A run's training log and its metrics (``metrics.json`` with ``evaluation.json`` on top)."""
    from sae_lens_ext.run.output import METRICS_FILENAME, TRAINING_LOG, read_log

    log, met = folder / TRAINING_LOG, folder / METRICS_FILENAME
    if not log.is_file() and not met.is_file():
        raise fail(
            f"RUN {folder}: no training_log.jsonl or metrics.json; give folders written by "
            "`sae-lens train` or `sae-lens demo`"
        )
    metrics: dict[str, Any] = {}
    for name in (METRICS_FILENAME, EVALUATION_FILENAME):
        if (folder / name).is_file():
            try:
                metrics.update(json.loads((folder / name).read_text()))
            except json.JSONDecodeError as exc:
                raise fail(f"{folder / name}: not valid JSON ({one_line(exc)})") from exc
    return read_log(log), metrics


def compared_keys(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """The metrics to compare: those in any run's table (``labels``), first seen first."""
    keys: dict[str, str] = {}
    for run in metrics.values():
        for key, label in run.get("labels", {}).items():  # report.LABELS_KEY
            keys.setdefault(key, label)
    return list(keys.items())


def plots(runs: list[str], output: str) -> int:
    """The body of ``sae-lens plots``."""
    from sae_lens_ext.run.figures import plot_metric_bars, plot_training_curves

    folders = [Path(r) for r in runs]
    logs: dict[str, list[dict[str, Any]]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for name, folder in zip(run_labels(folders), folders, strict=True):
        logs[name], metrics[name] = read_run(folder)
    out = Path(output)
    written = []
    if any(logs.values()):
        written.append(
            plot_training_curves({k: v for k, v in logs.items() if v}, out / "training_curves.png")
        )
    keys = compared_keys(metrics)
    if keys:
        written.append(plot_metric_bars(metrics, keys, out / "metrics_comparison.png"))
    for path in written:
        print(path)
    return 0
