"""``sae-lens evaluate``: re-evaluate a trained SAE on fresh data, or with SAE-Bench.

Without ``--bench``: a demo folder against its saved ground truth, a train folder with
SAE-Lens's ``run_evals`` and the plugins' metrics (``evaluation.json``). With ``--bench``:
SAE-Bench's own evaluations (:mod:`sae_lens_ext.bench`) on any SAE-Lens SAE, folder or hub
id, and the plugins' metrics on the same model's activations written beside SAE-Bench's
files (:mod:`sae_lens_ext.run.bench_cli`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae_lens_ext.errors import fail
from sae_lens_ext.metrics import EvalData, Metric, metrics_dict
from sae_lens_ext.run.output import load_saved_sae
from sae_lens_ext.run.results import EVALUATION_FILENAME, RUNNER_CFG, read_runner_cfg


def evaluate(path: str, *, samples: int, seed: int, as_json: bool) -> int:
    """The body of ``sae-lens evaluate``."""
    from sae_lens_ext.synthetic import DATA_DIR, SyntheticModelData, load_demo_data

    folder = Path(path)
    sae = load_saved_sae(folder)
    if (folder / DATA_DIR).is_dir():
        metrics = _synthetic(sae, load_demo_data(folder / DATA_DIR), samples, seed)
    elif (folder / "synthetic_model").is_dir():  # demo folders of release 0.1.0
        metrics = _synthetic(sae, SyntheticModelData.load_files(folder), samples, seed)
    elif (folder / RUNNER_CFG).is_file():
        metrics = _language_model(sae, folder, samples)
    else:
        raise fail(
            f"PATH {path}: no {DATA_DIR}/ or {RUNNER_CFG} to tell what data to evaluate on; "
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

    from sae_lens_ext.run.lm import model_and_store
    from sae_lens_ext.run.report import plugin_metrics

    runner_cfg = read_runner_cfg(folder)
    assert runner_cfg is not None  # evaluate reads LM folders only, which hold one
    cfg, model, store = model_and_store(runner_cfg)
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
    values, _ = run_evals(
        sae, store, model, ActivationScaler(), eval_cfg, exclude_special_tokens=False
    )
    metrics = [
        Metric(key, value, f"{key.replace('_', ' ')} ({category.replace('_', ' ')})")
        for category, group in values.items()
        for key, value in (group.items() if isinstance(group, dict) else [(category, group)])
    ]
    sequences: list[torch.Tensor] = []
    with torch.no_grad():
        while sum(s.shape[0] * s.shape[1] for s in sequences) < tokens:
            acts = store.get_activations(store.get_batch_tokens())
            sequences.append(acts.reshape(acts.shape[0], acts.shape[1], -1).float().cpu())
    data = EvalData(torch.cat(sequences), description=f"{cfg.model_name} {cfg.hook_name}")
    return metrics + plugin_metrics(sae, data)
