"""sparse_probing_sae_probes: SAE-Bench's ``sparse_probing_sae_probes.main.run_eval``, unchanged.

It loads no model itself: sae-probes reads the model's activations from its cache, which
its own ``ensure_dataset_activations`` fills from the prepared model first. Its folders
(results, activation cache; SAE-Bench's defaults are under the working directory) are in
the run's scratch folder.
"""

from __future__ import annotations

from pathlib import Path

from sae_lens_ext.bench.output import retagged
from sae_lens_ext.bench.prepared import BenchRun


def run_sae_probes(run: BenchRun) -> Path:
    """SAE-Bench's sparse_probing_sae_probes.run_eval on ``run.sae``, its result renamed."""
    from sae_bench.evals.sparse_probing_sae_probes import main as sae_probes_eval
    from sae_probes.generate_model_activations import ensure_dataset_activations

    cfg = run.config(
        "sparse_probing_sae_probes",
        model_name=run.model.cfg.model_name,  # a path part in sae-probes' folders
        random_seed=run.settings.random_seed,
        results_path=str(run.scratch / "sae_probes_results"),
        model_cache_path=str(run.scratch / "sae_probes_model_acts"),
    )
    ensure_dataset_activations(
        model_name=cfg.model_name,
        dataset_short_names=list(cfg.dataset_names),
        hook_names=[run.sae.cfg.hook_name],
        model_cache_path=cfg.model_cache_path,
        device=run.device,
        model=run.model,
    )
    staging = run.scratch / "sae_probes_output"
    sae_probes_eval.run_eval(cfg, [(run.release, run.sae)], run.device, str(staging), True)
    return retagged(run, "sparse_probing_sae_probes", staging, "custom_sae")
