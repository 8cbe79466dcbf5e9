"""Dead-latent resampling: what a resampler sees and returns (the ``resample_dead_latents``
hook). The core schedules a resample during a step
(:meth:`sae_lens_ext.training.sae.LossTermsMixin.apply_pending_resample` writes it) and
:mod:`sae_lens_ext.training.after_step` runs it after the optimizer step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


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
