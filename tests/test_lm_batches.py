"""Batches from upstream's ``ActivationsStore`` that checkpoints restore exactly
(``sae_lens_ext.data.lm_batches``): the same batches as ``iter(store)``, and a fresh store
loaded from a state continues exactly where the first one was."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from tests.helpers import TinyLM

pytestmark = pytest.mark.e2e  # loads the tiny model with SAE-Lens


def make_store(tiny: TinyLM, model: Any = None, **overrides: Any) -> tuple[Any, Any]:
    from sae_lens import LanguageModelSAERunnerConfig, StandardTrainingSAEConfig
    from sae_lens.load_model import load_model
    from sae_lens.training.activations_store import ActivationsStore

    settings = {
        "model_class_name": "AutoModelForCausalLM",
        "model_name": str(tiny.model_dir),
        "hook_name": tiny.hook_name,
        "dataset_path": str(tiny.dataset_dir),
        "streaming": False,
        "context_size": tiny.context_size,
        "train_batch_size_tokens": 96,
        "store_batch_size_prompts": 4,
        "n_batches_in_buffer": 8,
        "training_tokens": 10**6,
        "device": "cpu",
        **overrides,
    }
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=tiny.d_in, d_sae=32), **settings
    )
    if model is None:
        model = load_model(cfg.model_class_name, cfg.model_name, device="cpu")
    return ActivationsStore.from_config(model, cfg), model


@pytest.fixture(scope="module")
def model(tiny_lm: TinyLM) -> Any:
    return make_store(tiny_lm)[1]


@pytest.fixture(scope="module")
def short_text(tiny_lm: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The first 30 documents of the tiny dataset: a few thousand tokens, so that a test
    goes through several epochs."""
    folder = tmp_path_factory.mktemp("short_text")
    lines = (tiny_lm.dataset_dir / "train.jsonl").read_text().splitlines()[:30]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def take(batches: Any, n: int) -> list[torch.Tensor]:
    return [b.clone() for b in itertools.islice(batches, n)]


@pytest.mark.parametrize("mixing", [0.5, 0.0])
def test_mixed_token_batches_are_what_the_store_serves(
    tiny_lm: TinyLM, model: Any, short_text: str, mixing: float
):
    """Over several epochs of the dataset (upstream's new-epoch path included)."""
    from sae_lens_ext.data.lm_batches import MixedTokenBatches

    n = 120  # 120 x 96 tokens: more than twice the short dataset
    settings = {"activations_mixing_fraction": mixing, "dataset_path": short_text}
    torch.manual_seed(0)
    store, _ = make_store(tiny_lm, model, **settings)
    with pytest.warns(UserWarning, match="exhausted"):
        expected = take(store, n)
    torch.manual_seed(0)
    store, _ = make_store(tiny_lm, model, **settings)
    with pytest.warns(UserWarning, match="exhausted"):
        got = take(MixedTokenBatches(store), n)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_a_fresh_store_continues_exactly_from_a_state(tiny_lm: TinyLM, model: Any):
    from sae_lens_ext.data.lm_batches import MixedTokenBatches

    torch.manual_seed(1)
    batches = MixedTokenBatches(make_store(tiny_lm, model)[0])
    take(batches, 37)  # mid-buffer, rows of the dataset partly used
    state, rng = batches.state_dict(), torch.get_rng_state()
    expected = take(batches, 60)

    torch.manual_seed(99)  # whatever drew before: the loop restores the generator
    resumed = MixedTokenBatches(make_store(tiny_lm, model)[0])
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    assert all(torch.equal(a, b) for a, b in zip(expected, take(resumed, 60), strict=True))


def test_window_batches_restore_the_store_position_exactly(tiny_lm: TinyLM, model: Any):
    """The window provider replays the store's token reads (upstream's dataset-row count
    would land on another context when a row spans several)."""
    from sae_lens_ext.data.windows import WindowShuffledLMBatches

    def windows() -> WindowShuffledLMBatches:
        return WindowShuffledLMBatches(make_store(tiny_lm, model)[0], 4, 64, 8, seed=3)

    batches = windows()
    take(batches, 41)  # here upstream's position (dataset rows) misses by a context
    state = batches.state_dict()
    expected = take(batches, 50)
    resumed = windows()
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, take(resumed, 50), strict=True))


def test_prefetched_batches_load_a_state_before_prefetching(tiny_lm: TinyLM, model: Any):
    from sae_lens_ext.data.lm_batches import MixedTokenBatches, PrefetchedBatches

    torch.manual_seed(2)
    plain = MixedTokenBatches(make_store(tiny_lm, model)[0])
    take(plain, 10)
    state, rng = plain.state_dict(), torch.get_rng_state()
    expected = take(plain, 5)
    prefetched = PrefetchedBatches(MixedTokenBatches(make_store(tiny_lm, model)[0]), 2)
    prefetched.load_state_dict(state)
    torch.set_rng_state(rng)
    try:
        assert torch.equal(next(prefetched), expected[0])
        assert prefetched.state_dict()["reads"] >= state["reads"]
        with pytest.raises(RuntimeError, match="before the first batch"):
            prefetched.load_state_dict(state)
    finally:
        prefetched.close()
