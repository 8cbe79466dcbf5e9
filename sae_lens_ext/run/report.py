"""Metrics, figures and saved files of a finished run; the tables the commands print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_lens_ext.metrics import EvalData, Metric, generic_metrics, metrics_dict
from sae_lens_ext.run.output import METRICS_FILENAME, RunOutput, read_log, write_json

PLOTS_DIR = "plots"
#: ``metrics.json`` key holding the table rows (label, formatted value) of the metrics.
ROWS_KEY = "table"
#: ``metrics.json`` key mapping each numeric metric to its label (what ``plots`` compares).
LABELS_KEY = "labels"


def collect_metrics(sae: Any, data: EvalData) -> list[Metric]:
    """Generic metrics, then every plugin's ``evaluation_metrics`` for this SAE and data
    (a plugin that fails is named in a warning and left out)."""
    return generic_metrics(sae, data) + plugin_metrics(sae, data)


def plugin_metrics(sae: Any, data: EvalData) -> list[Metric]:
    """Every plugin's ``evaluation_metrics``; a plugin that fails is named and left out."""
    from sae_lens_ext.plugins import call_each_list

    return call_each_list("evaluation_metrics", Metric, sae=sae, data=data)


def plugin_figures(sae: Any, data: EvalData, folder: Path) -> list[Path]:
    """Every plugin's ``run_figures``; a plugin that fails is named and left out."""
    from sae_lens_ext.plugins import call_each_list

    return call_each_list("run_figures", Path, sae=sae, data=data, folder=folder)


def has_plugin_figures() -> bool:
    """Whether any loaded plugin draws figures (``run_figures``): data are read only then."""
    from sae_lens_ext.plugins import load_plugins

    return bool(load_plugins().hook.run_figures.get_hookimpls())


def write_plots(
    folder: Path,
    name: str,
    log: list[dict[str, Any]],
    sae: Any = None,
    data: EvalData | None = None,
) -> list[Path]:
    """A run's ``plots/`` (``sae-lens demo`` and ``sae-lens train``): the training curves of
    its log and, given ``data``, every plugin's figures of ``sae`` on them."""
    from sae_lens_ext.run.figures import plot_training_curves

    paths = [plot_training_curves({name: log}, folder / "training_curves.png")] if log else []
    if sae is not None and data is not None:
        paths += plugin_figures(sae, data, folder)
    return paths


def evaluate_and_save(
    sae: Any,
    trainer: Any,
    data: Any,
    output: RunOutput,
    eval_samples: int,
    seed: int,
    run_info: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate on fresh data with ground truth; write the SAE, its sparsity, the data,
    ``metrics.json`` and the figures into ``output`` (staged, ``cfg.json`` last)."""
    from sae_lens.constants import SPARSITY_FILENAME
    from safetensors.torch import save_file

    from sae_lens_ext.data.synthetic import DATA_DIR

    evaluation = data.eval_data(eval_samples, seed)
    metrics = collect_metrics(sae, evaluation)
    result = {**run_info, "eval_samples": evaluation.n_rows, **metrics_dict(metrics)}
    result[ROWS_KEY] = [row for row in (m.row() for m in metrics) if row is not None]
    result[LABELS_KEY] = {m.key: m.label or m.key for m in metrics if m.row() is not None}
    with output.staging() as tmp:
        sae.save_inference_model(tmp)
        save_file({"sparsity": trainer.log_feature_sparsity}, tmp / SPARSITY_FILENAME)
        data.save(tmp / DATA_DIR)
        write_json(tmp / METRICS_FILENAME, result)
        log = read_log(output.log_path)
        write_plots(tmp / PLOTS_DIR, run_info["architecture"], log, sae, evaluation)
    return result


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, min_width=74)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, value in rows:
        table.add_row(label, value)
    Console(width=100).print(table)


def print_results(out: Path, metrics: dict[str, Any]) -> None:
    """The demo's summary table."""
    print_table(
        f"{metrics['architecture']} SAE on synthetic data "
        f"({metrics['training_samples']:,} samples, {metrics['train_time_s']:.0f} s)",
        [tuple(row) for row in metrics[ROWS_KEY]],
    )
    print(f"SAE, metrics.json, training_log.jsonl and plots/ written to {out}/")
