"""Process-wide state SAE-Bench's code needs changed, each change undone on the way out.

SAE-Bench's per-SAE functions seed the global generators, switch gradients on and off for
the whole process, and load their datasets by hub id from the working directory. What
cannot be avoided is done here, inside context managers that put back what the caller had
(docs/internals.md lists each, with where and why):

* :func:`global_rng_restored`: Python's, NumPy's and torch's global generators
  (SAE-Bench seeds them; absorption's prompts draw from ``random``);
* :func:`grad_mode_restored`: torch's grad mode (SCR/TPP switch it off for the process);
* :func:`jaxtyping_shape_checks_off`: jaxtyping's global ``jaxtyping_disable`` switch;
* :func:`working_directory`: the working directory, for SAE-Bench's dataset loaders that
  take a hub id only (sparse probing, SCR, TPP with ``data_dir``);
* :func:`tokenizer_restored`: the shared model's tokenizer sides (not process-wide, but
  sae-probes changes them for every later bench).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def global_rng_restored() -> Iterator[None]:
    """Put Python's, NumPy's and torch's global generators (CPU and every CUDA device)
    back as they were: SAE-Bench seeds them inside its evaluations."""
    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def seed_global_rngs(seed: int) -> None:
    """Seed Python, NumPy and torch (SAE-Bench's absorption prompts use ``random``); call it
    inside :func:`global_rng_restored`."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def grad_mode_restored() -> Iterator[None]:
    """Put torch's grad mode back (SAE-Bench's SCR/TPP switch it off for the process)."""
    import torch

    enabled = torch.is_grad_enabled()
    try:
        yield
    finally:
        torch.set_grad_enabled(enabled)


@contextlib.contextmanager
def tokenizer_restored(tokenizer: Any) -> Iterator[None]:
    """Restore the tokenizer's padding and truncation sides after one evaluation.

    SAE-Bench's evals each load their own model; here they share one, and sae-probes
    sets ``truncation_side="left"``, which would make the next eval keep the end of
    long texts instead of their beginning.
    """
    sides = {k: getattr(tokenizer, k) for k in ("padding_side", "truncation_side")}
    try:
        yield
    finally:
        for key, value in sides.items():
            setattr(tokenizer, key, value)


@contextlib.contextmanager
def jaxtyping_shape_checks_off() -> Iterator[None]:
    """Switch jaxtyping's runtime shape checks off (its own ``jaxtyping_disable`` setting),
    and back to what they were.

    SAE-Bench 0.6.0's sparse probing fails on every run otherwise: inside
    ``train_probe_on_activations`` (``@jaxtyped``, which binds ``train_dataset_size``
    to the rows of one class) it calls ``train_sklearn_probe`` (bare ``@beartype``),
    whose inputs hold positives and negatives (twice as many rows), and jaxtyping
    checks them against the enclosing call's sizes (BeartypeCallHintParamViolation).
    These are type annotations, not evaluation logic; nothing else changes. jaxtyping
    reads the switch at each call, so it cannot be set for SAE-Bench's functions alone.
    """
    import jaxtyping

    previous = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", previous)


@contextlib.contextmanager
def working_directory(folder: str | Path | None) -> Iterator[None]:
    """Run in ``folder`` (if given), where ``load_dataset("org/name")`` finds ``org/name/``.

    Only for SAE-Bench's loaders that take a hub id and no folder; anything that takes a
    path gets one instead (:meth:`~sae_lens_ext.bench.prepared.BenchRun.dataset_path`).
    """
    if folder is None:
        yield
        return
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)
