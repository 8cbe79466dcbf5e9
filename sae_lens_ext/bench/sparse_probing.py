"""sparse_probing: ``sae_bench.evals.sparse_probing.main.run_eval``'s per-SAE body.

Probes on the model's and on the top-k SAE latents' activations, over SAE-Bench's labelled
datasets; run on the prepared model, with no activation cache kept (``run_eval`` saves
activations under the working directory), packed exactly as ``run_eval`` packs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_lens_ext.bench.errors import dataset_errors, hub_datasets
from sae_lens_ext.bench.output import output_fields, save_output
from sae_lens_ext.bench.prepared import BenchRun
from sae_lens_ext.bench.process_state import jaxtyping_shape_checks_off, working_directory
from sae_lens_ext.bench.settings import sae_bench_batch_size


def probing_values(run: BenchRun) -> dict[str, Any]:
    """Our settings for the fields sparse probing, SCR and TPP share."""
    from sae_bench.evals.core.eval_config import CoreEvalConfig

    s = run.settings
    return {
        "model_name": run.model_name,
        "llm_dtype": run.llm_dtype,
        "llm_batch_size": s.llm_batch_size
        or sae_bench_batch_size(run.model_name)
        or CoreEvalConfig().batch_size_prompts,  # these configs have no default
        "sae_batch_size": s.sae_batch_size,
        "context_length": s.context_size,
        "random_seed": s.random_seed,
    }


def run_sparse_probing(run: BenchRun) -> Path:
    """sparse_probing.main.run_eval's per-SAE body, without cached activations.

    SAE-Bench's dataset loaders take a hub id only, so a ``data_dir`` is their working
    directory for this call.
    """
    from sae_bench.evals.sparse_probing import eval_output as out
    from sae_bench.evals.sparse_probing import main as sparse_probing

    cfg = run.config("sparse_probing", **probing_values(run))
    artifacts = run.scratch / out.EVAL_TYPE_ID_SPARSE_PROBING
    with (
        dataset_errors("sparse_probing", hub_datasets(cfg.dataset_names), cfg.dataset_names),
        jaxtyping_shape_checks_off(),
        working_directory(run.settings.data_dir),
    ):
        results, per_class = sparse_probing.run_eval_single_sae(
            cfg, run.sae, run.model, run.device, str(artifacts), save_activations=False
        )

    def scalars(prefix: str) -> dict[str, Any]:
        return {
            k: v for k, v in results.items() if k.startswith(prefix) and not isinstance(v, dict)
        }

    output = out.SparseProbingEvalOutput(
        eval_result_metrics=out.SparseProbingMetricCategories(
            llm=out.SparseProbingLlmMetrics(**scalars("llm_")),
            sae=out.SparseProbingSaeMetrics(**scalars("sae_")),
        ),
        eval_result_details=[
            out.SparseProbingResultDetail(dataset_name=name, **result)
            for name, result in results.items()
            if isinstance(result, dict)
        ],
        eval_result_unstructured=per_class,
        **output_fields(run, cfg),
    )
    return save_output(run, "sparse_probing", output)
