"""core: ``sae_bench.evals.core.main.multiple_evals``' per-SAE body, on the prepared model.

KL and CE-loss scores, reconstruction, sparsity and feature density, on core's text dataset
read by SAE-Lens' ``ActivationsStore`` (a local copy under ``data_dir`` by its path).
"""

from __future__ import annotations

from pathlib import Path

from sae_lens_ext.bench.errors import dataset_errors
from sae_lens_ext.bench.prepared import BenchRun

# Every metric group on, as SAE-Bench's core CLI and `multiple_evals` set them
# (get_multiple_evals_everything_config + compute_featurewise_* in run_evaluations).
CORE_METRICS = {
    "compute_kl": True,
    "compute_ce_loss": True,
    "compute_l2_norms": True,
    "compute_sparsity_metrics": True,
    "compute_variance_metrics": True,
    "compute_featurewise_density_statistics": True,
    "compute_featurewise_weight_based_metrics": True,
}
CORE_SHUFFLE_SEED = 42  # core.main.multiple_evals: activation_store.shuffle_input_dataset(seed=42)


def run_core(run: BenchRun) -> Path:
    """core.main.multiple_evals' per-SAE body, on ``run.model``."""
    from sae_bench.evals.core import main as core
    from sae_bench.sae_bench_utils import get_sae_bench_version, get_sae_lens_version
    from sae_lens.training.activations_store import ActivationsStore

    s = run.settings
    cfg = run.config(
        "core",
        model_name=run.model_name,
        llm_dtype=run.llm_dtype,
        batch_size_prompts=s.batch_size_prompts,
        dataset=s.dataset,
        context_size=s.context_size,
        **CORE_METRICS,
    )
    with dataset_errors("core", [cfg.dataset]):
        store = ActivationsStore.from_sae(
            run.model,
            run.sae,
            context_size=cfg.context_size,
            dataset=run.dataset_path(cfg.dataset),  # the config records the name given
            dataset_trust_remote_code=True,
        )
        store.shuffle_input_dataset(seed=CORE_SHUFFLE_SEED)
        tokenizer = run.model.tokenizer
        assert tokenizer is not None  # load_model gave the model its tokenizer
        ignore = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}
        scalars, features = core.run_evals(
            sae=run.sae,
            activation_store=store,
            model=run.model,
            eval_config=cfg,
            ignore_tokens=ignore,
            # SAE-Bench's batch bars (core runs minutes on a real model); the recorded
            # config stays SAE-Bench's own (its `verbose` changes no result)
            verbose=True,
        )
    result = core.nested_dict()
    result.update(unique_id=run.sae_name, sae_set=run.release, sae_id=run.sae_id, eval_cfg=cfg)
    result["metrics"] = scalars
    if cfg.compute_featurewise_density_statistics or cfg.compute_featurewise_weight_based_metrics:
        result["metrics"]["misc_metrics"] = core.calculate_misc_metrics(features)
        result["feature_metrics"] = features
    path = run.result_path("core")
    core.save_single_eval_result(
        core.replace_nans_with_negative_one(result),
        run.eval_id,
        get_sae_lens_version(),
        get_sae_bench_version(),
        str(path),
        run.sae,
    )
    return path
