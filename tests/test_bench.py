"""SAE-Bench's own evaluations on a tiny local model, offline (``sae_lens_ext.bench``).

The world (``tests/bench_world.py``) is built so that the right answers are known:

* a tiny GPT-2 whose token embeddings carry each word's first letter, a word-level
  tokenizer, and local stand-ins (same schema, under their hub ids in a data folder)
  for the datasets SAE-Bench loads from the hub;
* a "rotated identity" SAE (latents ``relu(x . r_j)`` and ``relu(-x . r_j)`` for the
  columns ``r_j`` of a rotation ``R``, decoder ``[R^T; -R^T]``): it reconstructs
  exactly. ``R`` is the identity except for 45-degree turns that mix letter ``b``,
  ``d`` or ``f`` with the dimension holding a random sign of that letter's words, so
  each of these letters is split over two latents (one per sign); every other
  letter is one latent. Absorption must count two split features for b, d and f,
  one for the others, and no absorption;
* a random SAE of the ``freq_ordered`` plugin architecture, built through the
  SAE-Lens registry, whose core metrics are recomputed here from the same tokens.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from sae_lens_ext.bench import BenchDataError, BenchSettings, run_bench
from tests.bench_world import (
    CONTEXT,
    SAE_PROBES_DATASET,
    SPLIT,
    World,
    build_world,
    random_sae,
    rotated_identity_sae,
)

D_IN, D_SAE = 64, 128
PROBING_SETS = ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5_sentiment"]
PLUGIN = ("freq_ordered", D_SAE, "blocks.1.hook_resid_post")  # architecture, d_sae, hook


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the evals are many tiny ops (the machine's cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def grad_mode_kept():
    """SAE-Bench's own run_eval switches gradients off for the whole process (the
    ``sae_bench_entry_points`` fixture calls it): later test modules need them on."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("bench_world"), d_model=D_IN)


@pytest.fixture(scope="module")
def identity_sae_dir(world: World) -> Path:
    """The rotated identity SAE, saved: evaluated from its folder, as `sae-lens train` writes."""
    folder = world.model_dir.parent / "identity_sae"
    rotated_identity_sae(world).save_model(folder)
    return folder


def _settings(world: World) -> BenchSettings:
    return BenchSettings(
        context_size=CONTEXT,
        batch_size_prompts=8,
        llm_batch_size=32,
        device="cpu",
        data_dir=world.data_dir,
        overrides={
            "core": {"n_eval_reconstruction_batches": 2, "n_eval_sparsity_variance_batches": 2},
            # 128: several optimizer steps per epoch on a small vocabulary (default 4096)
            "absorption": {"max_k_value": 3, "k_sparse_probe_batch_size": 128},
            "sparse_probing": {
                "dataset_names": PROBING_SETS,
                "probe_train_set_size": 80,
                "probe_test_set_size": 40,
            },
            "scr": {
                "dataset_names": ["LabHC/bias_in_bios_class_set1"],
                "column1_vals_lookup": {"LabHC/bias_in_bios_class_set1": [("professor", "nurse")]},
                "train_set_size": 80,
                "test_set_size": 40,
                "n_values": [2, 5, 10, 20],
            },
            "tpp": {
                "dataset_names": ["LabHC/bias_in_bios_class_set1"],
                "train_set_size": 80,
                "test_set_size": 40,
                "n_values": [2, 5, 10, 20],
            },
            "sparse_probing_sae_probes": {"dataset_names": [SAE_PROBES_DATASET], "ks": [1, 2]},
        },
    )


def _caller_state() -> dict:
    """What run_bench must give back as it found it: working directory, the global
    generators (their next draws), grad mode and jaxtyping's switch."""
    import random

    import jaxtyping
    import numpy as np

    python, numpy, torch_cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    state = {
        "cwd": Path.cwd(),
        "random": random.random(),
        "numpy": float(np.random.rand()),
        "torch": torch.rand(1).item(),
        "grad": torch.is_grad_enabled(),
        "jaxtyping_disable": jaxtyping.config.jaxtyping_disable,
    }
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(torch_cpu)
    return state


@pytest.fixture(scope="module")
def identity_run(world: World, identity_sae_dir: Path, tmp_path_factory):
    """Every bench that seeds the generators, switches gradients or jaxtyping off or needs
    ``data_dir`` as working directory, with the caller's state before and after."""
    out = tmp_path_factory.mktemp("identity_results")
    benches = ["core", "absorption", "sparse_probing", "scr", "tpp"]
    before = _caller_state()
    paths = run_bench(identity_sae_dir, benches, _settings(world), out)
    return paths, before, _caller_state()


@pytest.fixture(scope="module")
def identity_results(identity_run) -> dict[str, Path]:
    return identity_run[0]


@pytest.fixture(scope="module")
def plugin_run(world: World, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("plugin_results")
    sae = random_sae(world, *PLUGIN)
    seen = {"cfg_before": sae.cfg.to_dict()}

    def extra(run):
        seen["hook"] = run.sae.cfg.hook_name
        seen["truncation_side"] = run.model.tokenizer.truncation_side
        seen["same_parameters"] = run.sae is not sae and run.sae.W_dec is sae.W_dec
        return {"d_sae": run.sae.cfg.d_sae}

    benches = ["core", "sparse_probing_sae_probes"]
    paths = run_bench(sae, benches, _settings(world), out, name="ordered", extra_metrics=extra)
    return sae, paths, seen


def _load(output_class, path: Path):
    """Validate a result file with SAE-Bench's own validator, then read it back."""
    from pydantic import TypeAdapter
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    validate_eval_output_format_file(str(path), output_class)
    return TypeAdapter(output_class).validate_python(json.loads(path.read_text()))


def test_sae_bench_tooling_reads_the_results(identity_results: dict[str, Path]) -> None:
    """SAE-Bench's graphing utilities find each metric group by folder and file name."""
    from sae_bench.sae_bench_utils import graphing_utils

    groups = {"core": "l0", "absorption": "mean_absorption_fraction_score",
              "sparse_probing": "sae_top_1_test_accuracy", "scr": "scr_metric_threshold_2",
              "tpp": "tpp_threshold_2_total_metric"}  # fmt: skip
    for bench, metric in groups.items():
        results = graphing_utils.get_eval_results([str(identity_results[bench])])
        assert set(results) == {"identity_sae_custom_sae"}
        row = results["identity_sae_custom_sae"]
        assert row["sae_class"] == "standard" and metric in row, bench
    core = graphing_utils.get_core_results([str(identity_results["core"])])
    assert core["identity_sae_custom_sae"]["l0"] == pytest.approx(D_IN)


# --- core -----------------------------------------------------------------------------------


def test_core_identity_sae_reconstructs_exactly(identity_results: dict[str, Path]) -> None:
    from sae_bench.evals.core.eval_output import CoreEvalOutput

    path = identity_results["core"]
    assert path.parent.name == "core" and path.name == "identity_sae_custom_sae_eval_results.json"
    result = _load(CoreEvalOutput, path)
    metrics = result.eval_result_metrics
    assert metrics.reconstruction_quality.explained_variance == pytest.approx(1.0, abs=1e-5)
    assert metrics.reconstruction_quality.cossim == pytest.approx(1.0, abs=1e-5)
    assert metrics.reconstruction_quality.mse == pytest.approx(0.0, abs=1e-8)
    assert metrics.model_performance_preservation.ce_loss_score == pytest.approx(1.0, abs=1e-3)
    assert metrics.model_behavior_preservation.kl_div_score == pytest.approx(1.0, abs=1e-4)
    assert metrics.shrinkage.l2_ratio == pytest.approx(1.0, abs=1e-5)
    # each activation x_i != 0 fires exactly one of relu(x_i), relu(-x_i)
    assert metrics.sparsity.l0 == pytest.approx(D_IN)
    assert len(result.eval_result_details) == D_SAE
    assert result.eval_config.dataset == "Skylion007/openwebtext"  # the local stand-in
    assert result.sae_cfg_dict["metadata"]["hook_name"] == "blocks.0.hook_resid_post"


def _core_direct(world: World) -> dict[str, float]:
    """Core's sparsity/variance metrics recomputed here, from the batches core reads.

    Core reads ``n_eval_sparsity_variance_batches`` batches of ``batch_size_prompts``
    prompts from SAE-Lens' activation store (shuffled with seed 42) after its
    reconstruction batches and ``reset_input_dataset()``; special tokens (here all
    token 0) are left out.
    """
    from sae_lens.training.activations_store import ActivationsStore

    from sae_lens_ext.bench import load_hooked_transformer

    sae = random_sae(world, *PLUGIN)
    sae.cfg.metadata.prepend_bos = True
    model, hook = load_hooked_transformer(
        str(world.model_dir), sae.cfg.metadata.hook_name, device="cpu", dtype="float32"
    )
    cwd = Path.cwd()
    os.chdir(world.data_dir)
    try:
        store = ActivationsStore.from_sae(
            model, sae, context_size=CONTEXT, dataset="Skylion007/openwebtext"
        )
        store.shuffle_input_dataset(seed=42)
        for _ in range(2):  # core's reconstruction batches come first
            store.get_batch_tokens(8)
        store.reset_input_dataset()
        tokens = torch.cat([store.get_batch_tokens(8) for _ in range(2)])
    finally:
        os.chdir(cwd)
    keep = (tokens != model.tokenizer.bos_token_id).flatten()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, prepend_bos=False, names_filter=hook)
        x = cache[hook].flatten(0, 1)[keep]
        z = sae.encode(x)
        x_hat = sae.decode(z)
    rss = (x - x_hat).pow(2).sum(-1).mean()
    return {
        "tokens": float(keep.sum()),
        "l0": (z != 0).sum(-1).float().mean().item(),
        "cossim": torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).mean().item(),
        # SAE-Bench 0.6.0 (core/main.py): total variance = E||x||^2 - (E[x_d^2])^2
        "ev_sae_bench": (1 - rss / (x.pow(2).sum(-1).mean() - x.pow(2).mean() ** 2)).item(),
        "ev_about_mean": (1 - rss / (x - x.mean(0)).pow(2).sum(-1).mean()).item(),
    }


def test_core_of_a_plugin_sae_matches_a_direct_computation(world: World, plugin_run) -> None:
    from sae_bench.evals.core.eval_output import CoreEvalOutput

    _, paths, _ = plugin_run
    result = _load(CoreEvalOutput, paths["core"])
    assert result.sae_cfg_dict["architecture"] == "freq_ordered"
    metrics = result.eval_result_metrics
    direct = _core_direct(world)
    assert metrics.token_stats.total_tokens_eval_sparsity_variance == 2 * 8 * CONTEXT
    assert direct["tokens"] > 0.8 * 2 * 8 * CONTEXT  # special tokens left out
    assert metrics.sparsity.l0 == pytest.approx(direct["l0"], rel=1e-5)
    assert metrics.reconstruction_quality.cossim == pytest.approx(direct["cossim"], abs=1e-5)
    ev = metrics.reconstruction_quality.explained_variance
    assert ev == pytest.approx(direct["ev_sae_bench"], abs=1e-4)
    assert 0.05 < ev < 0.95  # a random SAE: neither nothing nor everything
    # ... which is not the textbook one (variance about the mean): 0.395 vs 0.381 here
    assert abs(direct["ev_about_mean"] - ev) > 5e-3


# --- absorption -----------------------------------------------------------------------------


def test_absorption_counts_split_letters_and_no_absorption(identity_results) -> None:
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput

    result = _load(AbsorptionEvalOutput, identity_results["absorption"])
    details = {d.first_letter: d for d in result.eval_result_details}
    assert len(details) >= result.eval_config.min_feats_for_eval  # SAE-Bench's default, 20
    assert set(SPLIT) <= set(details)
    for letter, detail in details.items():
        assert detail.num_split_features == (2 if letter in SPLIT else 1), letter
        assert detail.mean_absorption_fraction < 0.05, letter
        assert detail.full_absorption_rate == 0.0, letter
        assert detail.num_probe_true_positives > 0
    mean = result.eval_result_metrics.mean
    expected_splits = sum(2 if x in SPLIT else 1 for x in details) / len(details)
    assert mean.mean_num_split_features == pytest.approx(expected_splits)


# --- probing --------------------------------------------------------------------------------


def test_sparse_probing_reads_the_class_words(identity_results) -> None:
    from sae_bench.evals.sparse_probing.eval_output import SparseProbingEvalOutput

    result = _load(SparseProbingEvalOutput, identity_results["sparse_probing"])
    names = [d.dataset_name for d in result.eval_result_details]
    assert names == [f"{n}_results" for n in PROBING_SETS]
    llm, sae = result.eval_result_metrics.llm, result.eval_result_metrics.sae
    for k in (1, 2, 5):  # chance is 0.5; the class words make every probe good
        assert getattr(llm, f"llm_top_{k}_test_accuracy") > 0.8
        assert getattr(sae, f"sae_top_{k}_test_accuracy") > 0.8
    assert llm.llm_test_accuracy > 0.8 and sae.sae_test_accuracy > 0.8
    assert sae.sae_top_10_test_accuracy is None  # k_values default [1, 2, 5]


@pytest.mark.parametrize("bench", ["scr", "tpp"])
def test_scr_and_tpp_report_every_threshold(identity_results, bench: str) -> None:
    from sae_bench.evals.scr_and_tpp import eval_output

    output_class = eval_output.ScrEvalOutput if bench == "scr" else eval_output.TppEvalOutput
    result = _load(output_class, identity_results[bench])
    assert result.eval_type_id == bench and result.eval_config.perform_scr == (bench == "scr")
    metrics = vars(getattr(result.eval_result_metrics, f"{bench}_metrics"))
    for n in (2, 5, 10, 20):
        key = f"scr_metric_threshold_{n}" if bench == "scr" else f"tpp_threshold_{n}_total_metric"
        assert math.isfinite(metrics[key]), key
    assert all(v is None for k, v in metrics.items() if k.endswith(("_50", "_100", "_500")))
    if bench == "tpp":  # accuracy drops, in [-1, 1]
        assert all(-1 <= v <= 1 for v in metrics.values() if v is not None)


def test_sae_probes_on_a_plugin_sae(plugin_run) -> None:
    from sae_bench.evals.sparse_probing_sae_probes.eval_output import (
        SparseProbingSaeProbesEvalOutput,
    )

    _, paths, _ = plugin_run
    path = paths["sparse_probing_sae_probes"]
    assert path.name == "ordered_custom_sae_eval_results.json"
    result = _load(SparseProbingSaeProbesEvalOutput, path)
    assert [d.dataset_name for d in result.eval_result_details] == [SAE_PROBES_DATASET]
    sae = result.eval_result_metrics.sae
    for k in (1, 2):
        assert 0 <= getattr(sae, f"sae_top_{k}_test_accuracy") <= 1
        assert 0 <= getattr(sae, f"sae_top_{k}_test_auc") <= 1
    assert sae.sae_top_5_test_accuracy is None
    assert 0 <= result.eval_result_metrics.llm.llm_test_accuracy <= 1


# --- the same numbers as SAE-Bench's own entry points ------------------------------------------


@pytest.fixture(scope="module")
def sae_bench_entry_points(world: World, tmp_path_factory):
    """Run SAE-Bench's own ``run_eval`` / ``multiple_evals``, their hub loading stood in for.

    They load the model with ``HookedTransformer.from_pretrained_no_processing(name)``;
    here that returns the local model for the name ``tiny`` (a test stand-in at the
    hub boundary; no SAE-Bench code is changed). The SAE is the rotated identity SAE
    with its TransformerLens hook name, the configs are the ones our files record.
    """
    from sae_bench.evals.core import main as core
    from sae_bench.evals.scr_and_tpp import main as scr_and_tpp
    from sae_bench.evals.sparse_probing import main as sparse_probing
    from transformer_lens import HookedTransformer

    from sae_lens_ext.bench import load_hooked_transformer, sae_bench_config_class
    from sae_lens_ext.bench.process_state import jaxtyping_shape_checks_off

    model, hook = load_hooked_transformer(
        str(world.model_dir), "transformer.h.0", device="cpu", dtype="float32"
    )
    sae = rotated_identity_sae(world)
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = hook, "tiny"
    out = tmp_path_factory.mktemp("sae_bench_entry_points")
    ours = tmp_path_factory.mktemp("ours")
    settings = _settings(world)
    settings.model_name = str(world.model_dir)
    paths = run_bench(sae, ["core", "sparse_probing", "tpp"], settings, ours, name="tiny")
    patch = pytest.MonkeyPatch()
    patch.setattr(
        HookedTransformer, "from_pretrained_no_processing", classmethod(lambda cls, *a, **k: model)
    )
    patch.chdir(world.data_dir)
    theirs = {}
    try:
        core.multiple_evals(
            [("tiny", sae)], 2, 2, 8, True, True, False, "Skylion007/openwebtext", CONTEXT,
            str(out / "core"), dtype="float32", device="cpu",
        )  # fmt: skip
        theirs["core"] = out / "core" / "tiny_custom_sae_eval_results.json"
        for bench, module in (("sparse_probing", sparse_probing), ("tpp", scr_and_tpp)):
            recorded = json.loads(paths[bench].read_text())["eval_config"]
            config = sae_bench_config_class(bench)(**{**recorded, "model_name": "tiny"})
            folder = out if bench == "tpp" else out / bench  # SCR/TPP add their own folder
            with jaxtyping_shape_checks_off():
                module.run_eval(config, [("tiny", sae)], "cpu", str(folder), True, True, False,
                                str(out / "artifacts"))  # fmt: skip
            theirs[bench] = out / bench / "tiny_custom_sae_eval_results.json"
    finally:
        patch.undo()
    return paths, theirs


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix: tree}


@pytest.mark.parametrize("bench", ["core", "sparse_probing", "tpp"])
def test_same_metrics_as_sae_bench_run_eval(sae_bench_entry_points, bench: str) -> None:
    ours, theirs = (json.loads(p[bench].read_text()) for p in sae_bench_entry_points)
    for part in ("eval_result_metrics", "eval_result_details", "eval_result_unstructured"):
        mine, reference = _flat(ours[part]), _flat(theirs[part])
        assert mine.keys() == reference.keys(), part
        for key, value in reference.items():
            if isinstance(value, float):
                assert mine[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
            else:
                assert mine[key] == value, key
    assert len(_flat(ours["eval_result_metrics"])) >= 8
    assert {**ours["eval_config"], "model_name": "tiny"} == theirs["eval_config"]


# --- the layer itself ------------------------------------------------------------------------


def test_plugin_run_writes_extra_metrics_and_leaves_the_cfg(plugin_run) -> None:
    sae, paths, seen = plugin_run
    assert set(paths) == {"core", "sparse_probing_sae_probes", "sae_lens_ext"}
    extra = json.loads(paths["sae_lens_ext"].read_text())
    assert extra["metrics"] == {"d_sae": D_SAE} and extra["architecture"] == "freq_ordered"
    assert seen["hook"] == "blocks.1.hook_resid_post"
    assert seen["truncation_side"] == "right"  # sae-probes' "left" did not leak out
    assert not hasattr(sae.cfg, "hook_layer")  # SAE-Bench's fields went to a copy
    assert sae.cfg.metadata.prepend_bos is None
    assert sae.cfg.to_dict() == seen["cfg_before"]  # on the device and dtype it had
    assert seen["same_parameters"]  # the evaluations' copy reads the caller's weights


def test_run_bench_leaves_the_callers_process_state(identity_run) -> None:
    """SAE-Bench seeds the global generators (absorption, sparse probing, SCR, TPP), turns
    gradients off (SCR/TPP) and jaxtyping's checks off (sparse probing), and reads its
    datasets from ``data_dir`` as working directory: all of it is given back."""
    _, before, after = identity_run
    assert after == before


def test_process_state_is_restored_when_an_evaluation_fails(tmp_path: Path) -> None:
    import jaxtyping

    from sae_lens_ext.bench.process_state import (
        global_rng_restored,
        jaxtyping_shape_checks_off,
        seed_global_rngs,
        working_directory,
    )

    before = _caller_state()
    with (
        pytest.raises(RuntimeError, match="boom"),
        global_rng_restored(),
        jaxtyping_shape_checks_off(),
        working_directory(tmp_path),
    ):
        seed_global_rngs(0)
        assert Path.cwd() == tmp_path.resolve() and jaxtyping.config.jaxtyping_disable
        raise RuntimeError("boom")
    assert _caller_state() == before


def test_hugging_face_module_hooks_map_to_the_residual_stream(world: World) -> None:
    from transformers import AutoModelForCausalLM

    from sae_lens_ext.bench import check_same_activations, load_hooked_transformer

    model, hook = load_hooked_transformer(
        str(world.model_dir), "transformer.h.1", device="cpu", dtype="float32"
    )
    assert hook == "blocks.1.hook_resid_post" and model.cfg.n_layers == 2
    hf_model = AutoModelForCausalLM.from_pretrained(world.model_dir).eval()
    assert check_same_activations(hf_model, "transformer.h.1", model, hook) < 1e-5
    with pytest.raises(ValueError, match="differ"):  # the check can fail
        check_same_activations(hf_model, "transformer.h.0", model, hook)
    with pytest.raises(ValueError, match="decoder layers"):
        load_hooked_transformer(
            str(world.model_dir), "transformer.h.1.mlp", device="cpu", dtype="float32"
        )


@pytest.mark.parametrize(
    ("bench", "dataset"), [("core", "Skylion007/openwebtext"), ("tpp", "LabHC/bias_in_bios")]
)
def test_missing_dataset_fails_with_one_line(
    world: World, identity_sae_dir: Path, tmp_path: Path, bench: str, dataset: str
) -> None:
    settings = _settings(world)
    settings.data_dir = None  # offline, and no local copy in the working directory
    with pytest.raises(BenchDataError) as caught:
        run_bench(identity_sae_dir, [bench], settings, tmp_path)
    message = str(caught.value)
    assert "\n" not in message and dataset in message and "data_dir" in message
    assert not (tmp_path / bench).exists() or not any((tmp_path / bench).iterdir())


def test_missing_model_fails_with_one_line() -> None:
    from sae_lens_ext.bench import load_hooked_transformer

    with pytest.raises(BenchDataError, match=r"model 'no-such-org/no-such-model'.*save_pretrained"):
        load_hooked_transformer(
            "no-such-org/no-such-model", "model.layers.0", device="cpu", dtype="float32"
        )


def test_unknown_bench_or_config_field_fails_before_loading() -> None:
    from sae_lens_ext.bench import check_benches

    with pytest.raises(ValueError, match="unknown benches"):
        check_benches(["core", "autointerp"], BenchSettings())
    with pytest.raises(ValueError, match="CoreEvalConfig"):
        check_benches(["core"], BenchSettings(overrides={"core": {"n_batches": 3}}))
