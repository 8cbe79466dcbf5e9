"""Dead-latent resampling: the request a resampler gets, what it returns, and how the core
applies it (after the optimizer step, resetting exactly the resampled rows' moments)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class ResampleRequest:
    """What a resampler sees: the SAE, which latents are dead, and the current batch."""

    sae: Any
    dead_latents: torch.Tensor  # int64 indices
    sae_in: torch.Tensor
    sae_out: torch.Tensor
    step: int


@dataclass
class ResampleResult:
    """New values for dead latents, keyed by parameter name (see
    ``LossTermTrainingSAE.latent_parameters``). Each tensor has the parameter's
    shape with the latent axis cut to ``len(dead_latents)``."""

    values: dict[str, torch.Tensor]
    resampler: str = ""
    info: dict[str, Any] = field(default_factory=dict)


_PENDING: weakref.WeakSet[Any] = weakref.WeakSet()
_hook_handle: Any = None


def install_optimizer_hook() -> None:
    """Register (once) a global optimizer step post-hook that applies pending resamples."""
    global _hook_handle
    if _hook_handle is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _hook_handle = register_optimizer_step_post_hook(_after_optimizer_step)


def _after_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    if not _PENDING:
        return
    param_ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for sae in list(_PENDING):
        if id(sae.W_dec) in param_ids:
            sae.apply_pending_resample(optimizer)


def reset_optimizer_rows(optimizer: Any, param: torch.Tensor, dim: int, rows: torch.Tensor) -> int:
    """Zero every parameter-shaped state tensor (Adam's ``exp_avg``, ``exp_avg_sq``...)
    of ``param`` along ``dim`` at ``rows``; return how many state tensors were reset."""
    state = optimizer.state.get(param, {})
    n = 0
    for value in state.values():
        if hasattr(value, "shape") and value.shape == param.shape:
            value.index_fill_(dim, rows.to(value.device), 0)
            n += 1
    return n
