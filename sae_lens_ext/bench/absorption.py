"""absorption: ``sae_bench.evals.absorption.main.run_eval``'s per-SAE body, on the prepared model.

Its two experiments (k-sparse probing of first letters, then feature absorption) run with
their caches in the run's scratch folder (``run_eval`` caches inside the installed package);
the result is packed exactly as ``run_eval`` packs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_lens_ext.bench.errors import ModelTooSmallError
from sae_lens_ext.bench.output import output_fields, save_output
from sae_lens_ext.bench.prepared import BenchRun
from sae_lens_ext.bench.process_state import seed_global_rngs
from sae_lens_ext.bench.settings import sae_bench_batch_size

EXPERIMENT_DIRS = ("k_sparse_probing", "feature_absorption", "probes")


def run_absorption(run: BenchRun) -> Path:
    """absorption.main.run_eval's per-SAE body, on ``run.model``, caches in scratch."""
    import torch
    from sae_bench.evals.absorption import main as absorption

    cfg = run.config(
        "absorption",
        model_name=run.model_name,
        llm_dtype=run.llm_dtype,
        llm_batch_size=run.settings.llm_batch_size or sae_bench_batch_size(run.model_name),
        random_seed=run.settings.random_seed,
    )
    seed_global_rngs(cfg.random_seed)  # run_bench gives the caller's generators back
    dirs = {name: run.scratch / "absorption" / name for name in EXPERIMENT_DIRS}
    common = dict(
        model=run.model,
        sae=run.sae,
        layer=run.sae.cfg.hook_layer,
        sae_name=run.sae_name,
        force=True,
        max_k_value=cfg.max_k_value,
        prompt_template=cfg.prompt_template,
        prompt_token_pos=cfg.prompt_token_pos,
        device=run.device,
        probes_dir=dirs["probes"],
    )
    with torch.enable_grad():  # run_eval: torch.set_grad_enabled(True)
        probing = _k_sparse_probing(run, cfg, common, dirs["k_sparse_probing"])
        raw = _feature_absorption(cfg, common, dirs)
    output = absorption_output(run, cfg, probing, absorption._aggregate_results_df(raw))
    return save_output(run, "absorption", output)


def _k_sparse_probing(run: BenchRun, cfg: Any, common: dict[str, Any], folder: Path) -> Any:
    """The first-letter probes; :class:`ModelTooSmallError` where ``run_eval`` would stop."""
    from sae_bench.evals.absorption.k_sparse_probing import run_k_sparse_probing_experiment

    try:
        probing = run_k_sparse_probing_experiment(
            **common,
            experiment_dir=folder,
            f1_jump_threshold=cfg.f1_jump_threshold,
            k_sparse_probe_l1_decay=cfg.k_sparse_probe_l1_decay,
            k_sparse_probe_batch_size=cfg.k_sparse_probe_batch_size,
            k_sparse_probe_num_epochs=cfg.k_sparse_probe_num_epochs,
            eval_batch_size=cfg.eval_k_sparse_probe_batch_size,
            precalc_k_sparse_probe_sae_acts=cfg.precalc_k_sparse_probe_sae_acts,
        )
    except KeyError as error:  # a letter with no word in the vocabulary's training split
        raise missing_letter_error(run.model_name, error) from error
    found = int((probing["f1_probe"] > cfg.min_GT_probe_f1).sum())
    if found < cfg.min_feats_for_eval:  # run_eval stops here without writing a result
        raise ModelTooSmallError(
            f"absorption: only {found} first-letter probes of {run.model_name} reach "
            f"F1 > {cfg.min_GT_probe_f1}; SAE-Bench needs min_feats_for_eval="
            f"{cfg.min_feats_for_eval} (it recommends models of 2B parameters or more)"
        )
    return probing


def _feature_absorption(cfg: Any, common: dict[str, Any], dirs: dict[str, Path]) -> Any:
    from sae_bench.evals.absorption.feature_absorption import run_feature_absortion_experiment

    return run_feature_absortion_experiment(
        **common,
        experiment_dir=dirs["feature_absorption"],
        sparse_probing_experiment_dir=dirs["k_sparse_probing"],
        feature_split_f1_jump_threshold=cfg.f1_jump_threshold,
        batch_size=cfg.llm_batch_size,
    )


def missing_letter_error(model_name: str, error: KeyError) -> Exception:
    """SAE-Bench's k-sparse probing trains one probe per first letter present in the
    training split of the vocabulary and then reads every letter's probe: a letter with no
    word in that split is a bare ``KeyError: <letter index>``. The split is random per run
    (``random.sample`` over the tokenizer's vocabulary, whose order a fast tokenizer changes
    on every call), so on a small vocabulary this happens in some runs and not others."""
    from sae_bench.evals.absorption.vocab import LETTERS

    index = error.args[0] if error.args else None
    if not isinstance(index, int) or not 0 <= index < len(LETTERS):
        return error
    return ModelTooSmallError(
        f"absorption: SAE-Bench's training split of {model_name}'s vocabulary has no word "
        f"starting with {LETTERS[index]!r}, so it has no probe for that letter (the split is "
        "drawn anew in each run from the tokenizer's vocabulary order); the vocabulary has too "
        "few words per first letter (SAE-Bench recommends models of 2B parameters or more)"
    )


def absorption_output(run: BenchRun, cfg: Any, probing: Any, agg: Any) -> Any:
    """AbsorptionEvalOutput exactly as absorption.main.run_eval builds it."""
    import statistics

    from sae_bench.evals.absorption import eval_output as out

    fractions, full_rates, splits, details = [], [], [], []
    for _, row in agg.iterrows():
        letter_f1 = probing[probing["letter"] == row["letter"]]["f1_probe"].item()
        if letter_f1 > cfg.min_GT_probe_f1:
            fractions.append(row["mean_absorption_fraction"])
            full_rates.append(row["full_absorption_rate"])
            splits.append(row["num_split_feats"])
            details.append(
                out.AbsorptionResultDetail(
                    first_letter=row["letter"],
                    mean_absorption_fraction=row["mean_absorption_fraction"],
                    full_absorption_rate=row["full_absorption_rate"],
                    num_full_absorption=row["num_full_absorption"],
                    num_probe_true_positives=row["num_probe_true_positives"],
                    num_split_features=row["num_split_feats"],
                )
            )
    mean = out.AbsorptionMeanMetrics(
        mean_absorption_fraction_score=statistics.mean(fractions),
        mean_full_absorption_score=statistics.mean(full_rates),
        mean_num_split_features=statistics.mean(splits),
        std_dev_absorption_fraction_score=statistics.stdev(fractions),
        std_dev_full_absorption_score=statistics.stdev(full_rates),
        std_dev_num_split_features=statistics.stdev(splits),
    )
    return out.AbsorptionEvalOutput(
        eval_type_id=out.EVAL_TYPE_ID_ABSORPTION,
        eval_result_metrics=out.AbsorptionMetricCategories(mean=mean),
        eval_result_details=details,
        **output_fields(run, cfg),
    )
