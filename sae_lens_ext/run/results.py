"""The saved results of a run folder, read back for ``compare``, ``evaluate`` and ``sweep``.

A run folder (written by ``sae-lens demo``, ``sae-lens train``, a sweep, or upstream's
runners: ``python -m sae_lens.llm_sae_training_runner``, cached activations included, and
``MultiSAETrainingRunner``, whose output folder holds one folder per SAE) may hold:

- ``training_log.jsonl`` (losses over steps), ``metrics.json`` (the run's metrics),
  ``evaluation.json`` (``sae-lens evaluate``), ``sparsity.safetensors`` (upstream's log10
  firing frequency of each latent over the last sparsity window of training);
- ``eval_results/<bench>/*_eval_results.json``: SAE-Bench's files written by
  ``sae-lens evaluate PATH --bench ...`` (and ``eval_results/sae_lens_ext/`` beside them);
- ``runner_cfg.json``: how it was trained (:func:`training_record`).

:func:`read_results` gathers them into one :class:`RunResults`, whose :attr:`values` is a
flat ``{column: number}`` record: the run's own metrics under their keys, SAE-Bench's
metrics as ``<bench>.<metric>`` (``core.kl_div_score``, ``scr.scr_metric_threshold_2``...),
the plugins' metrics written beside SAE-Bench's as ``sae_lens_ext.<key>``. Nothing here
knows an architecture.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sae_lens_ext.errors import fail, read_mapping

EVALUATION_FILENAME = "evaluation.json"
BENCH_DIR = "eval_results"
RUNNER_CFG = "runner_cfg.json"
SPARSITY_FILE = "sparsity.safetensors"
SWEEP_FILE = "sweep.json"
#: Key of a ``MultiSAETrainingRunner``'s ``runner_cfg.json``: each SAE's config by name.
MULTI_SAES = "saes"
#: ``log10`` firing frequencies at or below this are "never fired" (upstream adds 1e-10).
DEAD_LOG10 = -9.5
#: Keys of a demo's ``metrics.json`` that describe how it was trained (not results).
DEMO_TRAINING_KEYS = (
    "architecture",
    "d_in",
    "d_sae",
    "n_features",
    "data_seed",
    "training_samples",
    "training_steps",
    "lr",
    "sae_config",
    "trainer_config",
)
#: Keys of ``runner_cfg.json`` that do not change what is trained (besides the seed).
RUNNER_VOLATILE_KEYS = (
    "seed",
    "output_path",
    "checkpoint_path",
    "logger",
    "sae_lens_version",
    "sae_lens_training_version",
)
#: Metrics left out of the Markdown table (they stay in the CSV): counts and raw inputs.
DETAIL = re.compile(r"total_tokens|_with_|_without_|l2_norm_|_legacy|_window$")
#: Columns of the Markdown results table when present (besides labelled metrics).
HEADLINE = (
    "final_loss",
    "kl_div_score",
    "ce_loss_score",
    "explained_variance",
    "cossim",
    "l0",
    "l1",
    "core.kl_div_score",
    "core.ce_loss_score",
    "core.explained_variance",
    "core.cossim",
    "core.l0",
    "core.l1",
    "core.l2_ratio",
    "core.relative_reconstruction_bias",
    "absorption.mean_absorption_fraction_score",
    "absorption.mean_num_split_features",
    "scr.scr_metric_threshold_2",
    "scr.scr_metric_threshold_5",
    "scr.scr_metric_threshold_10",
    "scr.scr_metric_threshold_20",
    "tpp.tpp_threshold_2_total_metric",
    "tpp.tpp_threshold_20_total_metric",
    "sparse_probing.sae_top_1_test_accuracy",
    "sparse_probing_sae_probes.sae_top_1_test_accuracy",
)


@dataclass
class RunResults:
    """Everything saved about one run (see the module docstring)."""

    name: str
    folder: Path
    log: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    bench: dict[str, dict[str, Any]] = field(default_factory=dict)

    @cached_property
    def values(self) -> dict[str, float]:
        """Every number of the run as a flat record (see the module docstring)."""
        out: dict[str, float] = {}
        loss = self.final_loss()
        if loss is not None:
            out["final_loss"] = loss
        out.update({k: v for k, v in self.metrics.items() if is_number(v)})
        for bench, data in self.bench.items():
            out.update({f"{bench}.{k}": v for k, v in bench_metrics(data).items()})
        return out

    def value(self, *keys: str) -> float | None:
        """The first of ``keys`` the run has (e.g. SAE-Bench's value, then ours)."""
        values = self.values
        return next((values[k] for k in keys if k in values), None)

    def final_loss(self) -> float | None:
        losses = [r["loss"] for r in self.log if is_number(r.get("loss"))]
        return losses[-1] if losses else None

    def frequencies(self) -> Any | None:
        """``[d_sae]`` firing frequency of each latent over the last sparsity window of
        training (``sparsity.safetensors``; never-fired latents are 0), or ``None``."""
        path = self.folder / SPARSITY_FILE
        if not path.is_file():
            return None
        import torch
        from safetensors.torch import load_file

        log10 = load_file(path)["sparsity"].float().flatten()
        return torch.where(log10 <= DEAD_LOG10, torch.zeros_like(log10), 10.0**log10)

    @cached_property
    def runner(self) -> dict[str, Any] | None:
        """How the run was trained (:func:`training_record`), or ``None``."""
        return training_record(self.folder)

    def seed(self) -> int | None:
        if self.runner is not None:
            return self.runner.get("seed")
        return self.metrics.get("seed")

    def training_signature(self) -> str | None:
        """What was trained, but for the seed (JSON): equal for runs that differ only in
        their seed. ``None`` when the folder does not say."""
        if self.runner is not None:
            kept = {k: v for k, v in self.runner.items() if k not in RUNNER_VOLATILE_KEYS}
        elif "training_samples" in self.metrics:
            kept = {k: self.metrics.get(k) for k in DEMO_TRAINING_KEYS}
            kept["data_seed"] = self.metrics.get("data_seed", self.metrics.get("seed"))
        else:
            return None
        return json.dumps(kept, sort_keys=True, default=str)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool: a value the tables and figures show."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def bench_metrics(result: dict[str, Any]) -> dict[str, float]:
    """SAE-Bench's ``eval_result_metrics`` ({category: {metric: value}}) as {metric: value}.
    Values SAE-Bench did not compute (``None``, e.g. an SCR threshold not asked for) are
    left out; SAE-Bench's own -1 placeholders for NaN are kept as it wrote them."""
    flat: dict[str, float] = {}
    for group in (result.get("eval_result_metrics") or {}).values():
        if isinstance(group, dict):
            flat.update({k: v for k, v in group.items() if is_number(v)})
    return flat


def _read_json(path: Path) -> dict[str, Any] | None:
    return read_mapping(path, "", "a JSON object") if path.is_file() else None


def read_runner_cfg(folder: Path) -> dict[str, Any] | None:
    """The ``runner_cfg.json`` a ``sae-lens train`` folder holds (``None`` without one); a
    malformed one is one line, exit 2."""
    path = folder / RUNNER_CFG
    return (
        read_mapping(path, "", "a JSON object (the run's runner config)")
        if path.is_file()
        else None
    )


def training_record(folder: Path) -> dict[str, Any] | None:
    """The runner config an SAE folder was trained with, in the shape of upstream's
    ``LanguageModelSAERunnerConfig``: its own ``runner_cfg.json`` (``sae-lens train``,
    upstream's LLM runner), or, for one SAE of upstream's ``MultiSAETrainingRunner``, its
    parent folder's config narrowed to that SAE; ``None`` when nothing records it."""
    own = read_runner_cfg(folder)
    if own is not None and MULTI_SAES not in own:
        return own
    parent = read_runner_cfg(folder.parent) if (folder / "cfg.json").is_file() else None
    if parent is None or folder.name not in (parent.get(MULTI_SAES) or {}):
        return None
    hooks, heads = parent.get("hook_names"), parent.get("hook_head_indices")
    record = {
        k: v for k, v in parent.items() if k not in (MULTI_SAES, "hook_names", "hook_head_indices")
    }
    record["sae"] = parent[MULTI_SAES][folder.name]
    record["hook_name"] = hooks if isinstance(hooks, str) else (hooks or {}).get(folder.name)
    record["hook_head_index"] = heads.get(folder.name) if isinstance(heads, dict) else heads
    return record


def multi_sae_folders(folder: Path) -> list[Path]:
    """The SAE folders of a ``MultiSAETrainingRunner`` output folder (else none)."""
    record = read_runner_cfg(folder) if folder.is_dir() else None
    names = (record or {}).get(MULTI_SAES) or {}
    return [folder / n for n in names if (folder / n / "cfg.json").is_file()]


def read_bench_results(folder: Path) -> dict[str, dict[str, Any]]:
    """SAE-Bench's result files under ``folder/eval_results`` by bench (one SAE per folder:
    the newest file of each bench)."""
    found: dict[str, dict[str, Any]] = {}
    root = folder / BENCH_DIR
    if not root.is_dir():
        return found
    for bench_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(bench_dir.glob("*_eval_results.json"), key=lambda p: p.stat().st_mtime)
        data = _read_json(files[-1]) if files else None
        if data is None:
            continue
        if bench_dir.name == "sae_lens_ext":  # our file: {"metrics": {...}}
            data = {"eval_result_metrics": {"plugins": data.get("metrics", {})}}
        found[bench_dir.name] = data
    return found


def read_results(folder: Path, name: str | None = None) -> RunResults:
    """The saved results of one run folder; one line naming the folder if it has none."""
    from sae_lens_ext.run.output import METRICS_FILENAME, TRAINING_LOG, read_log

    if not folder.is_dir():
        raise fail(f"RUN {folder}: no such folder")
    log, bench = folder / TRAINING_LOG, read_bench_results(folder)
    saved = [METRICS_FILENAME, EVALUATION_FILENAME, "cfg.json", SPARSITY_FILE]
    if not log.is_file() and not bench and not any((folder / n).is_file() for n in saved):
        raise fail(
            f"RUN {folder}: no trained SAE, training_log.jsonl, metrics.json or eval_results/; "
            "give folders written by `sae-lens train`, `sae-lens demo`, `sae-lens sweep`, "
            "`sae-lens evaluate` or SAE-Lens's training runners"
        )
    run = RunResults(name or folder.name, folder, read_log(log), bench=bench)
    for filename in (METRICS_FILENAME, EVALUATION_FILENAME):
        data = _read_json(folder / filename) or {}
        run.labels.update(data.pop("labels", {}))  # report.LABELS_KEY
        data.pop("table", None)  # report.ROWS_KEY
        run.metrics.update(data)
    return run


def run_labels(folders: list[Path]) -> list[str]:
    """Short names that tell runs apart: the folder name, with as many parent folders as
    it takes to make every name unique."""
    parts = [f.resolve().parts for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise fail("RUN: the same folder is given twice")


def expand_sweeps(folders: list[Path]) -> list[Path]:
    """A sweep's output folder (it holds ``sweep.json``) stands for its trained variants,
    in the sweep's order; a ``MultiSAETrainingRunner``'s output folder for its SAEs."""
    out: list[Path] = []
    for folder in folders:
        record = _read_json(folder / SWEEP_FILE)
        if record is None:
            out += multi_sae_folders(folder) or [folder]
            continue
        names = [v["name"] for v in record.get("variants", [])]
        out += [folder / n for n in names if (folder / n / "cfg.json").is_file()]
    return out


def read_runs(folders: list[Path]) -> list[RunResults]:
    """The results of each run folder (a sweep's folder: of each of its variants)."""
    folders = expand_sweeps(folders)
    if not folders:
        raise fail("RUN: the sweep folders hold no trained variant yet")
    return [read_results(f, n) for f, n in zip(folders, run_labels(folders), strict=True)]


# --- the results table ------------------------------------------------------------------------


def table_columns(runs: list[RunResults], headline_only: bool) -> list[str]:
    """Columns present in any run: final loss, labelled metrics, then SAE-Bench's."""
    present: dict[str, None] = {}
    for run in runs:
        present.update(dict.fromkeys(run.values))
    ordered = [k for k in ("final_loss",) if k in present]
    for run in runs:
        ordered += [
            k
            for k in run.labels
            if k in present and k not in ordered and not (headline_only and DETAIL.search(k))
        ]
    ordered += [k for k in HEADLINE if k in present and k not in ordered]
    if not headline_only:
        ordered += [k for k in present if k not in ordered]
    return ordered


def write_results_table(
    runs: list[RunResults], folder: Path, stem: str = "results", extra: dict | None = None
) -> tuple[Path, Path]:
    """``<stem>.csv`` (every number of every run) and ``<stem>.md`` (the labelled and
    headline metrics); a metric a run lacks is an empty cell / ``n/a``, never 0.
    ``extra``: leading columns per run name (e.g. the sweep's status)."""
    folder.mkdir(parents=True, exist_ok=True)
    extra = extra or {}
    lead = list(dict.fromkeys(k for cols in extra.values() for k in cols))
    csv_path, md_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        columns = table_columns(runs, headline_only=False)
        writer.writerow(["run", *lead, *columns])
        for run in runs:
            cells = [extra.get(run.name, {}).get(k, "") for k in lead]
            writer.writerow([run.name, *cells, *(run.values.get(c, "") for c in columns)])
    md_path.write_text(markdown_table(runs, table_columns(runs, headline_only=True), extra, lead))
    return csv_path, md_path


def markdown_table(runs: list[RunResults], columns: list[str], extra: dict, lead: list[str]) -> str:
    """The table (metric keys as headers), then what each column is."""
    labels: dict[str, str] = {"final_loss": "training loss at the last logged step"}
    for run in runs:
        for key, label in run.labels.items():
            labels.setdefault(key, label)
    header = ["run", *lead, *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        values = run.values
        cells = [str(extra.get(run.name, {}).get(k, "")) for k in lead]
        cells += [format_number(values[c]) if c in values else "n/a" for c in columns]
        lines.append("| " + " | ".join([run.name, *cells]) + " |")
    lines += ["", "Columns:", ""]
    lines += [f"- `{c}`: {labels[c]}" for c in columns if labels.get(c, c) != c]
    return "\n".join(lines) + "\n"


def format_number(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"
