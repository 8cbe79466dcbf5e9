"""Dead-latent resampling types, and the optimizer-hook fallback for upstream's own runners.

After-step work (a resample chosen during the step, an architecture's periodic
permutation) needs the optimizer: the rows it rewrites must get fresh optimizer
moments. ``sae-lens train``/``demo`` call ``sae.after_optimizer_step(optimizer)``
explicitly after each step. SAE-Lens's own runners (``SAETrainer.fit``) know nothing of
it, so a plugin SAE that has such work pending asks for it through
:func:`request_after_step`, and a process-wide torch optimizer step post-hook runs it
for the optimizer that holds that SAE's parameters. An SAE driven by a loop that calls
``after_optimizer_step`` itself sets ``post_step_by_caller`` and is left alone here.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class AfterOptimizerStep(Protocol):
    """A training SAE with work that needs the optimizer right after each of its steps."""

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """Do it (resampling, a periodic permutation); return the permutation of the
        latents if one was applied (new latent ``j`` is old latent ``perm[j]``), so that the
        caller permutes the per-latent state it owns (the trainer's firing counters)."""
        ...


@dataclass
class ResampleRequest:
    """What a resampler sees: the SAE, which latents are dead, and the current batch.

    Attributes:
        sae: the training SAE (its ``cfg``, ``W_enc``, ``W_dec``, ``b_dec``...).
        dead_latents: int64 indices of the latents to resample.
        sae_in: the step's input rows (data-parallel: the global batch).
        sae_out: their reconstructions.
        step: the training step.
    """

    sae: Any
    dead_latents: torch.Tensor
    sae_in: torch.Tensor
    sae_out: torch.Tensor
    step: int


@dataclass
class ResampleResult:
    """New values for dead latents, keyed by the name of a latent-indexed parameter or
    buffer (the SAE's latent table, :func:`sae_lens_ext.api.latent_parameters`). Each
    tensor has that tensor's shape with the latent axis cut to ``len(dead_latents)``; a
    latent-indexed tensor not given keeps its old slices. Every latent-indexed parameter's
    optimizer state is reset for those latents."""

    values: dict[str, torch.Tensor]
    resampler: str = ""
    info: dict[str, Any] = field(default_factory=dict)


_waiting: weakref.WeakSet[Any] = weakref.WeakSet()
_hook_handle: Any = None


def request_after_step(sae: Any) -> None:
    """Ask for ``sae.after_optimizer_step(optimizer)`` after the next optimizer step of an
    optimizer holding its parameters (no-op when the caller drives it explicitly)."""
    global _hook_handle
    if getattr(sae, "post_step_by_caller", False):
        return
    if _hook_handle is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _hook_handle = register_optimizer_step_post_hook(_after_optimizer_step)
    _waiting.add(sae)


def _after_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    if not _waiting:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for sae in list(_waiting):
        if all(id(p) in held for p in sae.parameters()):
            _waiting.discard(sae)
            sae.after_optimizer_step(optimizer)


def is_waiting(sae: Any) -> bool:
    """Whether ``sae`` still waits for the fallback hook (no optimizer step ran since)."""
    return sae in _waiting


def cancel_after_step(sae: Any) -> None:
    _waiting.discard(sae)
