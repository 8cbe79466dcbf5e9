"""Which benches exist, how to run them, and which of them can read a given SAE.

Unset settings take SAE-Bench's own defaults, read from its config classes
(``sae_bench.evals.<eval>.eval_config``) and per-model tables at run time.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHES = ("core", "absorption", "sparse_probing", "sparse_probing_sae_probes", "scr", "tpp")
# sae-probes sparse probing: the most reliable SAE-Bench metric in Chanin's audit
# ("Are Sparse Autoencoder Benchmarks Reliable?", 2026), which found SCR and TPP
# unreliable at their canonical settings; core and absorption need no labelled data.
DEFAULT_BENCHES = ("core", "absorption", "sparse_probing_sae_probes")

# What each bench reads besides the model (SAE-Bench 0.6.0), for docs and errors.
BENCH_DATA = {
    "core": "a text dataset (`dataset`, default Skylion007/openwebtext)",
    "absorption": "nothing: prompts are built from the model's vocabulary",
    "sparse_probing": "LabHC/bias_in_bios, canrager/amazon_reviews_mcauley_1and5, "
    "codeparrot/github-code, fancyzhx/ag_news, Helsinki-NLP/europarl",
    "sparse_probing_sae_probes": "nothing: its datasets ship with the sae-probes package",
    "scr": "LabHC/bias_in_bios, canrager/amazon_reviews_mcauley_1and5",
    "tpp": "LabHC/bias_in_bios, canrager/amazon_reviews_mcauley_1and5",
}

# Each bench's SAE-Bench config class: sae_bench.evals.<module>.eval_config.<name>
CONFIG_CLASSES = {
    "core": ("core", "CoreEvalConfig"),
    "absorption": ("absorption", "AbsorptionEvalConfig"),
    "sparse_probing": ("sparse_probing", "SparseProbingEvalConfig"),
    "sparse_probing_sae_probes": ("sparse_probing_sae_probes", "SparseProbingSaeProbesEvalConfig"),
    "scr": ("scr_and_tpp", "ScrAndTppEvalConfig"),
    "tpp": ("scr_and_tpp", "ScrAndTppEvalConfig"),
}

# Benches that encode single-token activations taken out of their prompts (2-D rows from
# different prompts; SAE-Bench 0.6.0's k-sparse probing and absorption calculator, and
# sae-probes). The others encode whole sequences (batch, seq, d_in).
SINGLE_TOKEN_BENCHES = ("absorption", "sparse_probing_sae_probes")


@dataclass
class BenchSettings:
    """How to run the evaluations. ``None`` means SAE-Bench's own default.

    Args:
        model_name: the model the SAE reads: a TransformerLens name (``gemma-2-2b``),
            a hub id, or a local folder written by ``save_pretrained``. Default: the
            SAE's ``cfg.metadata.model_name``.
        dataset: core's text dataset: a hub id or a local path, as
            ``sae-lens train --dataset_path`` (default ``CoreEvalConfig.dataset``).
        context_size: core's ``context_size`` and the probing evals' ``context_length``
            (defaults ``CoreEvalConfig.context_size``, ``*EvalConfig.context_length``).
        batch_size_prompts: core's prompts per batch (``CoreEvalConfig.batch_size_prompts``).
        llm_batch_size: prompts per model batch of absorption, sparse probing, SCR and
            TPP (default: SAE-Bench's ``LLM_NAME_TO_BATCH_SIZE`` for its models, else
            ``CoreEvalConfig.batch_size_prompts``).
        sae_batch_size: SAE batch of sparse probing, SCR and TPP (``*.sae_batch_size``).
        device: default ``cuda`` when available, else ``cpu``.
        dtype: the model's and SAE's dtype (default: SAE-Bench's ``LLM_NAME_TO_DTYPE``
            for its models, else ``CoreEvalConfig.llm_dtype``).
        random_seed: the evals' ``random_seed`` (default each config's, 42).
        data_dir: a folder holding local copies of SAE-Bench's hub datasets under their
            hub ids (``DATA_DIR/LabHC/bias_in_bios/{train,test}.parquet``...), read
            before the hub: core reads ``DATA_DIR/<hub id>`` by path; sparse probing,
            SCR and TPP (whose SAE-Bench loaders take a hub id only) run with it as
            working directory, where ``datasets.load_dataset`` finds it, and the
            caller's working directory is restored after each.
        overrides: any other field of an eval's SAE-Bench config class, by bench
            (``{"scr": {"n_values": [2, 5, 10, 20]}}``); unknown fields are an error.
    """

    model_name: str | None = None
    dataset: str | None = None
    context_size: int | None = None
    batch_size_prompts: int | None = None
    llm_batch_size: int | None = None
    sae_batch_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    random_seed: int | None = None
    data_dir: str | Path | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


def sae_bench_config_class(bench: str) -> type:
    """SAE-Bench's config class of ``bench`` (its defaults are this package's defaults)."""
    module, name = CONFIG_CLASSES[bench]
    return getattr(importlib.import_module(f"sae_bench.evals.{module}.eval_config"), name)


def check_benches(benches: Sequence[str], settings: BenchSettings) -> None:
    """Fail early on an unknown bench or an override SAE-Bench's config has no field for."""
    unknown = sorted(set(benches) - set(BENCHES))
    if unknown:
        raise ValueError(f"unknown benches {unknown}; choose from {list(BENCHES)}")
    for bench, overrides in settings.overrides.items():
        if bench not in BENCHES:
            raise ValueError(f"overrides: unknown bench {bench!r}; choose from {list(BENCHES)}")
        if bench not in benches:
            continue  # importing some configs is slow (sae-probes reads its datasets)
        config_class = sae_bench_config_class(bench)
        names = {f.name for f in dataclasses.fields(config_class)}
        extra = sorted(set(overrides) - names)
        if extra:
            raise ValueError(
                f"overrides[{bench!r}]: {extra} are not fields of SAE-Bench's "
                f"{config_class.__name__} ({sorted(names)})"
            )


def encoder_window(cfg: Any) -> int:
    """Consecutive positions the SAE's encoder reads together: its config's
    ``architecture_window()`` (see docs/hooks.md), 1 without one."""
    window = getattr(cfg, "architecture_window", None)
    return int(window()) if callable(window) else 1


def out_of_context_benches(cfg: Any, benches: Sequence[str]) -> list[str]:
    """The ``benches`` that cannot evaluate an SAE of config ``cfg`` (see
    :data:`SINGLE_TOKEN_BENCHES`): none unless its encoder window is over 1."""
    if encoder_window(cfg) <= 1:
        return []
    return [bench for bench in benches if bench in SINGLE_TOKEN_BENCHES]


def out_of_context_reason(cfg: Any, benches: Sequence[str]) -> str:
    """Why ``benches`` (from :func:`out_of_context_benches`) cannot run, in one line."""
    return (
        f"{', '.join(benches)}: SAE-Bench encodes single tokens taken out of their prompts "
        f"there, but this SAE's encoder reads {encoder_window(cfg)} consecutive positions "
        "together (its cfg's architecture_window(), e.g. attention); its code of a lone token "
        "is not defined (core, sparse_probing, scr and tpp encode whole sequences)"
    )


def sae_bench_batch_size(model_name: str) -> int | None:
    """SAE-Bench's LLM batch size for its own models (activation_collection), else None."""
    from sae_bench.sae_bench_utils import activation_collection

    return activation_collection.LLM_NAME_TO_BATCH_SIZE.get(_short_name(model_name))


def sae_bench_dtype(model_name: str) -> str:
    """SAE-Bench's LLM dtype for its own models, else core's default (float32)."""
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.sae_bench_utils import activation_collection

    table = activation_collection.LLM_NAME_TO_DTYPE
    return table.get(_short_name(model_name), CoreEvalConfig().llm_dtype)


def _short_name(model_name: str) -> str:
    return model_name.rstrip("/").split("/")[-1]
