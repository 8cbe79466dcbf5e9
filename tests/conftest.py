"""Pytest fixtures shared by all test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import OFFLINE_ENV, TinyLM, build_tiny_lm, cache_tiny_lm_activations

os.environ.update(OFFLINE_ENV)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> TinyLM:
    """A tiny local GPT-2 + tokenizer + JSONL dataset, built once per session."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory, tiny_lm: TinyLM) -> Path:
    """The tiny model's activations (128 contexts of 32 positions), cached by upstream's
    ``CacheActivationsRunner``, built once per session."""
    path = tmp_path_factory.mktemp("tiny_cache") / "cache"
    cache_tiny_lm_activations(tiny_lm, path)
    return path


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory):
    """The example and test plugins pip-installed into a private directory.

    Returns a function giving the environment (PYTHONPATH + plugin selection)
    under which a fresh interpreter sees them as installed distributions.
    """
    from tests.helpers import install_plugins

    return install_plugins(tmp_path_factory.mktemp("plugin_site"))
