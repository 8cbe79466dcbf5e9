"""Optimizer state indexed by latent: the one place that edits it (reset or permute rows)."""

from __future__ import annotations

from typing import Any

import torch


def row_states(optimizer: Any, param: torch.Tensor) -> list[torch.Tensor]:
    """The optimizer's state tensors shaped like ``param`` (Adam's ``exp_avg``, ``exp_avg_sq``)."""
    state = optimizer.state.get(param, {})
    return [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == param.shape]


@torch.no_grad()
def reset_optimizer_rows(optimizer: Any, param: torch.Tensor, dim: int, rows: torch.Tensor) -> int:
    """Zero ``param``'s optimizer state along ``dim`` at ``rows``; return how many tensors."""
    states = row_states(optimizer, param)
    for value in states:
        value.index_fill_(dim, rows.to(value.device), 0)
    return len(states)


@torch.no_grad()
def permute_optimizer_rows(
    optimizer: Any, param: torch.Tensor, dim: int, permutation: torch.Tensor
) -> int:
    """Permute ``param``'s optimizer state along ``dim`` (new row ``j`` = old row
    ``permutation[j]``), as the parameter itself was; return how many tensors."""
    states = row_states(optimizer, param)
    for value in states:
        value.copy_(value.index_select(dim, permutation.to(value.device)))
    return len(states)


@torch.no_grad()
def permute_latent_state(tensors: list[torch.Tensor], permutation: torch.Tensor) -> None:
    """Permute per-latent 1-D state in place (e.g. a trainer's firing counters)."""
    for tensor in tensors:
        tensor.copy_(tensor.index_select(0, permutation.to(tensor.device)))
