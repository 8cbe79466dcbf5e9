"""SAE-Bench's own evaluations on a tiny local model, offline (``sae_lens_ext.bench``).

The world is built so that the right answers are known:

* a tiny GPT-2 (saved with ``save_pretrained``) whose token embeddings carry the
  token's first letter along basis direction ``e_letter`` (absorption's ground-truth
  probe can read it), and a word-level tokenizer (every vocabulary word is one token);
* local stand-ins, under their hub ids in a data folder, for the datasets SAE-Bench
  reads: ``Skylion007/openwebtext`` (text), ``LabHC/bias_in_bios`` (hard_text,
  profession, gender) and ``canrager/amazon_reviews_mcauley_1and5`` (text, category,
  rating), whose texts hold class words, so probes can learn the labels;
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
import random
import string
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from sae_lens_ext.bench import BenchDataError, BenchSettings, run_bench

D_IN, D_SAE, CONTEXT = 64, 128, 32
WORDS_PER_LETTER = 30
LETTER, SPLIT_SIGN = 3.0, 3.0  # embedding size of the first letter / of a split letter's sign
SPLIT = {"b": 40, "d": 41, "f": 42}  # letter -> the dimension holding its words' random sign
FILLER_LETTERS = "acepqrstuwxyz"  # filler words; class words start with one letter per class
PROFESSIONS = (0, 1, 2, 6, 9, 13, 21)  # class set 1, nurse (13) and professor (21)
CATEGORIES = (1, 2, 3, 5, 6)  # SAE-Bench's chosen amazon categories
SAE_PROBES_DATASET = "117_us_state_FL"
PROBING_SETS = ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5_sentiment"]
TEMPLATE_WORDS = ["has", "the", "first", "letter", ":", *string.ascii_uppercase]
SPECIALS = ["<|endoftext|>", "<|unk|>"]


@dataclass(frozen=True)
class World:
    model_dir: Path
    data_dir: Path
    identity_sae_dir: Path


# --- the tiny world ---------------------------------------------------------------------------


def _letter_words(rng: random.Random) -> list[str]:
    words: set[str] = set()
    for letter in string.ascii_lowercase:
        while len([w for w in words if w[0] == letter]) < WORDS_PER_LETTER:
            tail = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 5)))
            words.add(letter + tail)
    return sorted(words)


def _sae_probes_words() -> list[str]:
    import pandas as pd
    from sae_probes.constants import DATA_PATH

    frame = pd.read_csv(DATA_PATH / "cleaned_data" / f"{SAE_PROBES_DATASET}.csv.zst")
    words = {w for p in frame["prompt"] for w in p.replace(",", " ").split() if w.isalpha()}
    return sorted(words)


def _vocabulary(rng: random.Random) -> list[str]:
    words = [*TEMPLATE_WORDS, *_letter_words(rng), *_sae_probes_words()]
    return SPECIALS + list(dict.fromkeys(words))


def _build_model(folder: Path, vocab: list[str]) -> None:
    """Word-level tokenizer + GPT-2 whose embeddings hold each word's first letter."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, "<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|unk|>",
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=1024, n_embd=D_IN, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    embeddings = 0.3 * torch.randn(len(vocab), D_IN)
    signs = torch.randint(0, 2, (len(vocab),)) * 2.0 - 1.0
    for index, word in enumerate(vocab):
        if word.isalpha():
            letter = word[0].lower()
            embeddings[index, string.ascii_lowercase.index(letter)] += LETTER
            if letter in SPLIT:
                embeddings[index, SPLIT[letter]] += SPLIT_SIGN * signs[index]
    with torch.no_grad():
        model.transformer.wte.weight.copy_(embeddings)
    model.save_pretrained(folder)


def _write_split(folder: Path, split: str, rows: list[dict]) -> None:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / f"{split}.parquet")


def _class_words(rng: random.Random, pool: list[str], classes: list) -> dict:
    """Four words per class, all starting with a letter of that class only."""
    letters = [c for c in string.ascii_lowercase if c not in FILLER_LETTERS and c not in SPLIT]
    return {
        key: rng.sample([w for w in pool if w[0] == letter], 4)
        for key, letter in zip(classes, letters, strict=False)
    }


def _text(rng: random.Random, filler: list[str], *marks: list[str]) -> str:
    words = rng.sample(filler, 8) + [rng.choice(m) for m in marks for _ in range(3)]
    rng.shuffle(words)
    return " ".join(words)


def _build_data(folder: Path, rng: random.Random, pool: list[str]) -> None:
    """Stand-ins, of the hub datasets' schema, for what SAE-Bench loads by hub id."""
    filler = [w for w in pool if w[0] in FILLER_LETTERS]
    bios_marks = _class_words(rng, pool, [*PROFESSIONS, "male", "female"])
    review_marks = _class_words(rng, pool, [*CATEGORIES, 1.0, 5.0])
    for split, per_cell in (("train", 45), ("test", 25)):
        bios = [
            {
                "hard_text": _text(rng, filler, bios_marks[p], bios_marks[gender]),
                "profession": p,
                "gender": g,
            }
            for p in PROFESSIONS
            for g, gender in enumerate(("male", "female"))
            for _ in range(per_cell)
        ]
        _write_split(folder / "LabHC" / "bias_in_bios", split, bios)
        reviews = [
            {
                "text": _text(rng, filler, review_marks[c], review_marks[r]),
                "category": c,
                "rating": r,
            }
            for c in CATEGORIES
            for r in (1.0, 5.0)
            for _ in range(per_cell)
        ]
        _write_split(folder / "canrager" / "amazon_reviews_mcauley_1and5", split, reviews)
    text = folder / "Skylion007" / "openwebtext"
    text.mkdir(parents=True)
    with open(text / "train.jsonl", "w") as f:
        for _ in range(300):
            f.write(json.dumps({"text": " ".join(rng.choices(pool, k=60))}) + "\n")


def _rotation() -> torch.Tensor:
    """Identity, but 45-degree turns in the planes (letter, sign dimension) of SPLIT."""
    rotation = torch.eye(D_IN)
    for letter, sign_dim in SPLIT.items():
        i, c = string.ascii_lowercase.index(letter), 0.5**0.5
        (
            rotation[i, i],
            rotation[sign_dim, i],
            rotation[i, sign_dim],
            rotation[sign_dim, sign_dim],
        ) = (
            c,
            c,
            -c,
            c,
        )
    return rotation


def _rotated_identity_sae(model_dir: Path):
    """Standard SAE with latents relu(x R) and relu(-x R): exact reconstruction."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    metadata = SAEMetadata(
        model_name=str(model_dir),
        model_class_name="AutoModelForCausalLM",
        hook_name="transformer.h.0",  # a Hugging Face module, as `sae-lens train` writes it
        prepend_bos=True,
        context_size=CONTEXT,
    )
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=metadata))
    rotation = _rotation()
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([rotation, -rotation], dim=1))
        sae.W_dec.copy_(torch.cat([rotation.T, -rotation.T], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _plugin_sae(model_dir: Path):
    """A random SAE of the freq_ordered plugin architecture, from the SAE-Lens registry."""
    from sae_lens.registry import get_sae_class
    from sae_lens.saes.sae import SAEMetadata

    sae_class, config_class = get_sae_class("freq_ordered")
    metadata = SAEMetadata(model_name=str(model_dir), hook_name="blocks.1.hook_resid_post")
    sae = sae_class(config_class(d_in=D_IN, d_sae=D_SAE, metadata=metadata))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=generator) / D_IN**0.5)
        sae.b_enc.fill_(-0.2)
        sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_enc.T.clone(), dim=-1))
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the evals are many tiny ops (the machine's cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bench_world")
    rng = random.Random(0)
    vocab = _vocabulary(rng)
    _build_model(root / "model", vocab)
    pool = [w for w in vocab[len(SPECIALS) + len(TEMPLATE_WORDS) :] if w.isalpha()]
    _build_data(root / "data", rng, pool)
    _rotated_identity_sae(root / "model").save_model(root / "identity_sae")
    return World(root / "model", root / "data", root / "identity_sae")


def _settings(world: World, **overrides: dict) -> BenchSettings:
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
            **overrides,
        },
    )


@pytest.fixture(scope="module")
def identity_results(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("identity_results")
    benches = ["core", "absorption", "sparse_probing", "scr", "tpp"]
    return run_bench(world.identity_sae_dir, benches, _settings(world), out)


@pytest.fixture(scope="module")
def plugin_run(world: World, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("plugin_results")
    sae = _plugin_sae(world.model_dir)
    seen = {}

    def extra(run):
        seen["hook"] = run.sae.cfg.hook_name
        return {"d_sae": run.sae.cfg.d_sae}

    benches = ["core", "sparse_probing_sae_probes"]
    paths = run_bench(sae, benches, _settings(world), out, name="ordered", extra_metrics=extra)
    return sae, paths, seen


def _load(output_class, path: Path):
    """Read a result file back with SAE-Bench's own pydantic output class."""
    from pydantic import TypeAdapter

    return TypeAdapter(output_class).validate_python(json.loads(path.read_text()))


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

    sae = _plugin_sae(world.model_dir)
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
    # SAE-Bench's formula measures variance about zero, not about the mean:
    assert direct["ev_about_mean"] < ev - 0.01


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


# --- the layer itself ------------------------------------------------------------------------


def test_plugin_run_writes_extra_metrics_and_leaves_the_cfg(plugin_run) -> None:
    sae, paths, seen = plugin_run
    assert set(paths) == {"core", "sparse_probing_sae_probes", "sae_lens_ext"}
    extra = json.loads(paths["sae_lens_ext"].read_text())
    assert extra["metrics"] == {"d_sae": D_SAE} and extra["architecture"] == "freq_ordered"
    assert seen["hook"] == "blocks.1.hook_resid_post"
    assert not hasattr(sae.cfg, "hook_layer")  # SAE-Bench's fields went to a copy
    assert sae.cfg.metadata.prepend_bos is None


def test_hugging_face_module_hooks_map_to_the_residual_stream(world: World) -> None:
    from sae_lens_ext.bench import load_hooked_transformer

    model, hook = load_hooked_transformer(
        str(world.model_dir), "transformer.h.1", device="cpu", dtype="float32"
    )
    assert hook == "blocks.1.hook_resid_post" and model.cfg.n_layers == 2
    with pytest.raises(ValueError, match="decoder layers"):
        load_hooked_transformer(
            str(world.model_dir), "transformer.h.1.mlp", device="cpu", dtype="float32"
        )


@pytest.mark.parametrize(
    ("bench", "dataset"), [("core", "Skylion007/openwebtext"), ("tpp", "LabHC/bias_in_bios")]
)
def test_missing_dataset_fails_with_one_line(world: World, tmp_path: Path, bench, dataset) -> None:
    settings = _settings(world)
    settings.data_dir = None  # offline, and no local copy in the working directory
    with pytest.raises(BenchDataError) as caught:
        run_bench(world.identity_sae_dir, [bench], settings, tmp_path)
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
