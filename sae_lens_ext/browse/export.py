"""The browser's data in SAEDashboard's Neuronpedia format (``--export neuronpedia``).

SAEDashboard's ``neuronpedia-runner`` writes a folder of ``batch-<i>.json`` files (each a
batch of features: :data:`BATCH_FIELDS`, every feature :data:`FEATURE_FIELDS`, every
activation record :data:`ACTIVATION_FIELDS`) and ``run_settings.json``; Neuronpedia's
utilities convert such a folder for upload. This module writes the same files from what
``sae-lens browse`` measured, so a user moves them to a machine where those tools run.
What SAEDashboard computes and the browser does not (neuron alignment, correlated
neurons and features, decoder weight distribution) is written as empty lists.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from sae_lens_ext.browse.collect import linear_histogram
from sae_lens_ext.browse.data import BrowserData
from sae_lens_ext.browse.logits import PromotedTokens

FOLDER = "neuronpedia"
FEATURES_PER_BATCH = 128

#: The fields of a batch file and their JSON types.
BATCH_FIELDS = {"model_id": str, "layer": int, "sae_set": str, "features": list, "settings": dict}
#: The fields of one feature (SAEDashboard's ``NeuronpediaDashboardFeature``, plus the three
#: its converter sets: ``n_prompts_total``, ``n_tokens_in_prompt``, ``dataset``).
FEATURE_FIELDS: dict[str, type] = {
    "feature_index": int,
    "neuron_alignment_indices": list,
    "neuron_alignment_values": list,
    "neuron_alignment_l1": list,
    "correlated_neurons_indices": list,
    "correlated_neurons_l1": list,
    "correlated_neurons_pearson": list,
    "correlated_features_indices": list,
    "correlated_features_l1": list,
    "correlated_features_pearson": list,
    "neg_str": list,
    "neg_values": list,
    "pos_str": list,
    "pos_values": list,
    "frac_nonzero": float,
    "freq_hist_data_bar_values": list,
    "freq_hist_data_bar_heights": list,
    "logits_hist_data_bar_heights": list,
    "logits_hist_data_bar_values": list,
    "num_tokens_for_dashboard": int,
    "activations": list,
    "n_prompts_total": int,
    "n_tokens_in_prompt": int,
    "dataset": str,
}
#: The fields of one activation record (a top context): SAEDashboard's
#: ``NeuronpediaDashboardActivation``; top activations have ``bin_min`` -1 and
#: ``bin_contains`` -1, ``bin_max`` the latent's highest activation.
ACTIVATION_FIELDS = {
    "bin_min": float,
    "bin_max": float,
    "bin_contains": float,
    "tokens": list,
    "values": list,
}


def _round(values: Any) -> list[float]:
    return [round(float(v), 3) for v in values]


def _centres(edges: Any) -> list[float]:
    return _round((a + b) / 2 for a, b in itertools.pairwise(edges))


def hook_layer(hook_name: str) -> int:
    """The layer number in a hook name (``blocks.8.hook_resid_pre``, ``transformer.h.3``)."""
    match = re.search(r"(?:^|\.)(?:blocks|h|layers|layer)\.(\d+)(?:\.|$)", hook_name)
    return int(match.group(1)) if match else 0


def feature_record(
    data: BrowserData, row: int, promoted: PromotedTokens | None, context_size: int, dataset: str
) -> dict[str, Any]:
    """One latent as a SAEDashboard/Neuronpedia feature (:data:`FEATURE_FIELDS`)."""
    latent = data.latents[row]
    top = max(0.0, float(data.max_values[latent]))
    heights, edges = linear_histogram(data.hist_counts[row], data.hist_edges, top)
    record: dict[str, Any] = {key: [] for key, kind in FEATURE_FIELDS.items() if kind is list}
    record.update(
        feature_index=latent,
        frac_nonzero=float(data.frequencies[latent]),
        freq_hist_data_bar_values=_centres(edges),
        freq_hist_data_bar_heights=_round(heights),
        num_tokens_for_dashboard=data.n_tokens,
        n_prompts_total=data.n_contexts,
        n_tokens_in_prompt=context_size,
        dataset=dataset,
        activations=[
            {
                "bin_min": -1.0,
                "bin_max": round(top, 3),
                "bin_contains": -1.0,
                "tokens": c.tokens,
                "values": _round(c.values),
            }
            for c in data.top_contexts(latent)
        ],
    )
    if promoted is not None:
        logit_edges = promoted.hist_edges[row].tolist()
        record.update(
            pos_str=[data.token_text(int(t)) for t in promoted.top_ids[row]],
            pos_values=_round(promoted.top_values[row]),
            neg_str=[data.token_text(int(t)) for t in promoted.bottom_ids[row]],
            neg_values=_round(promoted.bottom_values[row]),
            logits_hist_data_bar_values=_centres(logit_edges),
            logits_hist_data_bar_heights=_round(promoted.hist_counts[row]),
        )
    return record


def write_neuronpedia(
    folder: Path, data: BrowserData, promoted: PromotedTokens | None, source: Any
) -> Path:
    """Write ``folder/neuronpedia/`` (``batch-<i>.json``, ``run_settings.json``); return it."""
    out = folder / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    settings = source.settings
    model_id, sae_set = str(settings["model_name"]), source.name.replace("/", "_")
    layer = hook_layer(str(settings["hook_name"]))
    dataset = str(settings["dataset_path"])
    for i, start in enumerate(range(0, len(data.latents), FEATURES_PER_BATCH)):
        rows = range(start, min(start + FEATURES_PER_BATCH, len(data.latents)))
        batch = {
            "model_id": model_id,
            "layer": layer,
            "sae_set": sae_set,
            "features": [
                feature_record(data, r, promoted, source.context_size, dataset) for r in rows
            ],
            "settings": {"n_batches_to_sample_from": 0, "n_prompt_to_select": 0},
        }
        (out / f"batch-{i}.json").write_text(json.dumps(batch))
    run_settings = {
        "generator": "sae-lens browse",
        "model_id": model_id,
        "layer": layer,
        "sae_set": sae_set,
        "sae_path": str(source.folder) if source.folder else source.name,
        "hook_name": str(settings["hook_name"]),
        "huggingface_dataset_path": dataset,
        "n_prompts_total": data.n_contexts,
        "n_tokens_in_prompt": source.context_size,
        "n_features_at_a_time": FEATURES_PER_BATCH,
        "features": data.latents,
    }
    (out / "run_settings.json").write_text(json.dumps(run_settings, indent=2))
    return out


def check_batch(batch: dict[str, Any]) -> list[str]:
    """Problems of one batch file against :data:`BATCH_FIELDS`, :data:`FEATURE_FIELDS` and
    :data:`ACTIVATION_FIELDS` (missing or extra fields, wrong JSON types); empty if none."""
    problems = _check(batch, BATCH_FIELDS, "batch")
    for i, feature in enumerate(batch.get("features", [])):
        problems += _check(feature, FEATURE_FIELDS, f"features[{i}]")
        for j, activation in enumerate(feature.get("activations", [])):
            where = f"features[{i}].activations[{j}]"
            problems += _check(activation, ACTIVATION_FIELDS, where)
            if len(activation.get("tokens", [])) != len(activation.get("values", [])):
                problems.append(f"{where}: tokens and values differ in length")
    return problems


def _check(record: Any, fields: dict[str, type], where: str) -> list[str]:
    if not isinstance(record, dict):
        return [f"{where}: not an object"]
    problems = [f"{where}: missing {k}" for k in fields if k not in record]
    problems += [f"{where}: unexpected {k}" for k in record if k not in fields]
    for key, kind in fields.items():
        value = record.get(key)
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is float
            else (isinstance(value, kind) and not isinstance(value, bool))
        )
        if key in record and not ok:
            problems.append(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return problems
