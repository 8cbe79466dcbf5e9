"""scr, tpp: ``sae_bench.evals.scr_and_tpp.main.run_eval``'s per-SAE body.

Spurious-correlation removal (``perform_scr=True``) and targeted probe perturbation
(``False``) on the prepared model, with no activation cache kept, packed exactly as
``run_eval`` packs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_lens_ext.bench.errors import dataset_errors, hub_datasets
from sae_lens_ext.bench.output import output_fields, save_output
from sae_lens_ext.bench.prepared import BenchRun
from sae_lens_ext.bench.process_state import working_directory
from sae_lens_ext.bench.sparse_probing import probing_values


def run_scr(run: BenchRun) -> Path:
    return run_scr_or_tpp(run, perform_scr=True)


def run_tpp(run: BenchRun) -> Path:
    return run_scr_or_tpp(run, perform_scr=False)


def run_scr_or_tpp(run: BenchRun, perform_scr: bool) -> Path:
    """scr_and_tpp.main.run_eval's per-SAE body, without cached activations.

    SAE-Bench's dataset loaders take a hub id only, so a ``data_dir`` is their working
    directory for this call.
    """
    from sae_bench.evals.scr_and_tpp import main as scr_and_tpp

    bench = "scr" if perform_scr else "tpp"
    cfg = run.config(bench, perform_scr=perform_scr, **probing_values(run))
    if cfg.perform_scr != perform_scr:
        raise ValueError(f"overrides[{bench!r}] must not set perform_scr")
    with (
        dataset_errors(bench, hub_datasets(cfg.dataset_names), cfg.dataset_names),
        working_directory(run.settings.data_dir),
    ):
        results, per_class = scr_and_tpp.run_eval_single_sae(
            cfg, run.sae, run.model, run.device, str(run.scratch / bench), save_activations=False
        )
    return save_output(run, bench, scr_tpp_output(run, cfg, results, per_class))


def scr_tpp_output(run: BenchRun, cfg: Any, results: dict, per_class: dict) -> Any:
    """ScrEvalOutput / TppEvalOutput exactly as scr_and_tpp.main.run_eval builds them."""
    from sae_bench.evals.scr_and_tpp import eval_output as out

    scalars = {k: v for k, v in results.items() if not isinstance(v, dict)}
    details = {k: v for k, v in results.items() if isinstance(v, dict)}
    if cfg.perform_scr:
        return out.ScrEvalOutput(
            eval_type_id=out.EVAL_TYPE_ID_SCR,
            eval_result_metrics=out.ScrMetricCategories(scr_metrics=out.ScrMetrics(**scalars)),
            eval_result_details=[
                out.ScrResultDetail(dataset_name=k, **v) for k, v in details.items()
            ],
            **output_fields(run, cfg),
        )
    return out.TppEvalOutput(
        eval_type_id=out.EVAL_TYPE_ID_TPP,
        eval_result_metrics=out.TppMetricCategories(tpp_metrics=out.TppMetrics(**scalars)),
        eval_result_details=[out.TppResultDetail(dataset_name=k, **v) for k, v in details.items()],
        eval_result_unstructured=per_class,
        **output_fields(run, cfg),
    )
