"""``sae-lens evaluate``: re-evaluate a trained SAE on fresh data, or with SAE-Bench.

Without ``--bench``: a demo folder against its saved ground truth, a train folder with
SAE-Lens's ``run_evals`` and the plugins' metrics (``evaluation.json``). With ``--bench``:
SAE-Bench's own evaluations (:mod:`sae_lens_ext.bench`) on any SAE-Lens SAE, folder or hub
id, and the plugins' metrics on the same model's activations written beside SAE-Bench's
files (:mod:`sae_lens_ext.run.bench_cli`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sae_lens_ext.errors import fail
from sae_lens_ext.metrics import EvalData, Metric, metrics_dict
from sae_lens_ext.run.output import load_saved_sae
from sae_lens_ext.run.results import (
    EVALUATION_FILENAME,
    RUNNER_CFG,
    multi_sae_folders,
    training_record,
)


def evaluate(
    path: str, *, samples: int, seed: int, as_json: bool, data: dict[str, Any] | None = None
) -> int:
    """The body of ``sae-lens evaluate``; ``data``: runner-config values given on the command
    line (``model_name``, ``model_class_name``, ``dataset_path``, ``device``) that replace
    what the run recorded."""
    from sae_lens_ext.data.synthetic import DATA_DIR, SyntheticModelData, load_demo_data

    folder, data = Path(path), data or {}
    refuse_multi_sae_folder(folder)
    sae = load_saved_sae(folder)
    record = training_record(folder)
    demo = (folder / DATA_DIR).is_dir() or (folder / "synthetic_model").is_dir()
    if demo and data:
        raise fail(
            f"--{next(iter(data))}: PATH {path} was trained on synthetic data (`sae-lens "
            "demo`) and is evaluated on its saved ground truth; leave the option out"
        )
    if (folder / DATA_DIR).is_dir():
        metrics = _synthetic(sae, load_demo_data(folder / DATA_DIR), samples, seed)
    elif (folder / "synthetic_model").is_dir():  # demo folders of release 0.1.0
        metrics = _synthetic(sae, SyntheticModelData.load_files(folder), samples, seed)
    elif record is not None:
        metrics = _language_model(sae, folder, {**record, **data}, set(data), samples)
    else:
        raise fail(
            f"PATH {path}: no {DATA_DIR}/ or {RUNNER_CFG} to tell what data to evaluate on; "
            "evaluate SAEs written by `sae-lens demo`, `sae-lens train` or SAE-Lens's runners"
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


def refuse_multi_sae_folder(folder: Path) -> None:
    """One line naming the SAE folders of a ``MultiSAETrainingRunner`` output folder."""
    saes = multi_sae_folders(folder)
    if saes:
        raise fail(
            f"PATH {folder} holds {len(saes)} SAEs trained together by SAE-Lens's "
            f"MultiSAETrainingRunner ({', '.join(p.name for p in saes)}); evaluate each "
            f"folder, e.g. {saes[0]}"
        )


def check_recorded_paths(
    folder: Path, record: dict[str, Any], given: set[str], *, required: bool = True
) -> None:
    """The model and dataset a run recorded exist here, unless the command line gives them;
    else one line naming the option that replaces them (``required``: a run that recorded
    none is refused too)."""
    from sae_lens_ext.run.lm_config import looks_local

    source = folder / RUNNER_CFG if (folder / RUNNER_CFG).is_file() else folder.parent / RUNNER_CFG
    for key in ("model_name", "dataset_path"):
        value = record.get(key)
        if key in given or (not value and not required):
            continue
        if not value:
            raise fail(
                f"{source} records no --{key} (a run on cached activations?); give the "
                f"{'model' if key == 'model_name' else 'token dataset'} to evaluate on: "
                f"--{key} PATH"
            )
        if looks_local(str(value)) and not Path(str(value)).expanduser().exists():
            raise fail(
                f"{source} records --{key} {value}, which is not here (trained on another "
                f"machine, or from another directory); give its place: --{key} PATH"
            )


def _language_model(
    sae: Any, folder: Path, record: dict[str, Any], given: set[str], tokens: int
) -> list[Metric]:
    """SAE-Lens's ``run_evals`` on the model and data in ``record`` (the run's, with the
    command line's ``given`` values), and every plugin's metrics on whole sequences of the
    same activations."""
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    from sae_lens_ext.data.lm_batches import store_sequences
    from sae_lens_ext.run.lm import model_and_store
    from sae_lens_ext.run.report import plugin_metrics

    check_recorded_paths(folder, record, given)
    if "device" in given:
        record["llm_device"] = record["act_store_device"] = record["device"]
    record["use_cached_activations"] = False  # tokens from the dataset, through the model
    cfg, model, store = model_and_store(record)
    sae = sae.to(cfg.device)
    batches = max(1, tokens // (cfg.store_batch_size_prompts * cfg.context_size))
    eval_cfg = EvalConfig(
        n_eval_reconstruction_batches=batches,
        n_eval_sparsity_variance_batches=batches,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    print(
        f"SAE-Lens's run_evals: {batches} batches of {cfg.store_batch_size_prompts} contexts "
        "(KL and CE-loss scores, reconstruction, sparsity)",
        file=sys.stderr,
    )
    values, _ = run_evals(
        sae, store, model, ActivationScaler(), eval_cfg, exclude_special_tokens=False, verbose=True
    )
    metrics = [
        Metric(key, value, f"{key.replace('_', ' ')} ({category.replace('_', ' ')})")
        for category, group in values.items()
        for key, value in (group.items() if isinstance(group, dict) else [(category, group)])
    ]
    print(f"the plugins' metrics: reading {tokens:,} tokens of whole sequences", file=sys.stderr)
    data = EvalData(store_sequences(store, tokens), description=f"{cfg.model_name} {cfg.hook_name}")
    return metrics + plugin_metrics(sae, data)
