"""Pytest fixtures shared by all test modules."""

from __future__ import annotations

import os

import pytest

from tests.helpers import OFFLINE_ENV, TinyLM, build_tiny_lm

os.environ.update(OFFLINE_ENV)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> TinyLM:
    """A tiny local GPT-2 + tokenizer + JSONL dataset, built once per session."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory):
    """The example and test plugins pip-installed into a private directory.

    Returns a function giving the environment (PYTHONPATH + plugin selection)
    under which a fresh interpreter sees them as installed distributions.
    """
    from tests.helpers import install_plugins

    return install_plugins(tmp_path_factory.mktemp("plugin_site"))
