"""The temporal loss terms and the batch layout they rely on.

Batch layout: a training batch of ``N`` rows is ``N / w`` windows (``w = temporal_window``);
each block of ``w`` consecutive rows holds ``w`` consecutive positions of one sequence.
The terms declare it through ``LossTerm.batch_window`` (so an SAE that enables them asks
the core for such batches, :mod:`sae_lens_ext.data.windows`), and check it at each step with
the core's :func:`~sae_lens_ext.data.windows.check_step_layout`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from typing_extensions import override

from sae_lens_ext.api import (
    BatchLayoutError,
    LossContext,
    check_step_layout,
    codes_of,
    window_variation,
)
from sae_lens_ext_plugins.temporal_consistency.contrastive import (
    SparseWindowInfoNCE,
    dense_window_infonce,
    sparse_path_applies,
)

EPS = 1e-6
DEFAULT_WINDOW = 4


def window_and_stride(option: Callable[[str, Any], Any]) -> tuple[int, int]:
    """``(temporal_window, temporal_stride)`` from an option lookup, validated."""
    window = int(option("temporal_window", DEFAULT_WINDOW))
    stride = int(option("temporal_stride", 1))
    if window < 2:
        raise BatchLayoutError(f"temporal_window must be >= 2, got {window}")
    if not 1 <= stride < window:
        raise BatchLayoutError(
            f"temporal_stride must be in [1, temporal_window - 1] = [1, {window - 1}], got {stride}"
        )
    return window, stride


def temporal_batch_window(option: Callable[[str, Any], Any]) -> int:
    """``LossTerm.batch_window`` of both temporal terms: ``temporal_window`` positions."""
    return window_and_stride(option)[0]


def window_settings(ctx: LossContext) -> tuple[int, int]:
    """``(temporal_window, temporal_stride)`` of this step, after checking the batch layout."""
    window, stride = window_and_stride(ctx.option)
    if ctx.feature_acts.dim() != 2:
        raise BatchLayoutError(
            f"temporal loss expects (batch, d_sae) latents, got shape {tuple(ctx.feature_acts.shape)}"
        )
    check_step_layout(ctx.sae, ctx.feature_acts.shape[0], window, ctx.step_input.n_training_steps)
    return window, stride


class _VariationPenalty(torch.autograd.Function):
    """Total variation with a hand-written backward that saves nothing of size ``N x d_sae``
    beyond ``feature_acts`` itself (alive anyway: the ReLU saved it).

    Forward: one difference of shifted views and one ``|.|`` column sum (``torch.linalg.
    vector_norm``, no ``abs`` temporary); the per-latent sums (a ``d_sae`` vector) are kept
    for the gradient in the decoder norms. Backward: the difference is recomputed, turned
    into its scaled sign in place, and the gradient of each position is written once
    (:func:`_shifted_difference`): no zero-filled buffer, no read-modify-write.
    """

    @override
    @staticmethod
    def forward(ctx: Any, f: torch.Tensor, norms: torch.Tensor, window: int, stride: int):
        w = f.reshape(-1, window, f.shape[-1])
        diff = torch.sub(w[:, stride:], w[:, :-stride])
        per_latent = torch.linalg.vector_norm(diff, ord=1, dim=(0, 1))
        ctx.save_for_backward(f, norms, per_latent)
        ctx.window, ctx.stride, ctx.count = window, stride, diff.shape[0] * diff.shape[1]
        acc = torch.promote_types(per_latent.dtype, torch.float32)  # at least float32
        return (per_latent.to(acc) * norms.to(acc)).sum() / ctx.count

    @override
    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        f, norms, per_latent = ctx.saved_tensors
        window, stride = ctx.window, ctx.stride
        scale = grad_out / ctx.count
        grad_f = grad_n = None
        if ctx.needs_input_grad[1]:
            grad_n = (per_latent * scale).to(norms.dtype)
        if ctx.needs_input_grad[0]:
            w = f.reshape(-1, window, f.shape[-1])
            signs = torch.sub(w[:, stride:], w[:, :-stride]).sign_()
            signs.mul_((norms * scale).to(signs.dtype))
            grad_f = _shifted_difference(signs, window, stride).reshape(f.shape)
        return grad_f, grad_n, None, None


def _shifted_difference(d: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """``g[:, t] = d[:, t - s] - d[:, t]`` over ``t < window`` (terms outside
    ``[0, window - s)`` are 0): the adjoint of ``f -> f[:, s:] - f[:, :-s]``, each
    position written once."""
    s = stride
    if torch.compiler.is_compiling():  # one fused kernel when compiled (no out= views)
        return F.pad(d, (0, 0, s, 0)) - F.pad(d, (0, 0, 0, s))
    g = d.new_empty(d.shape[0], window, d.shape[2])
    if 2 * s < window:  # positions with both terms
        torch.sub(d[:, : window - 2 * s], d[:, s : window - s], out=g[:, s : window - s])
    first = min(s, window - s)  # positions t < s with only -d[:, t]
    torch.neg(d[:, :first], out=g[:, :first])
    last = max(s, window - s)  # positions t >= window - s with only d[:, t - s]
    g[:, last:].copy_(d[:, last - s : window - s])
    if window - s < s:  # positions with neither term
        g[:, window - s : s].zero_()
    return g


def variation_penalty(
    feature_acts: torch.Tensor, window: int, stride: int, decoder_norms: torch.Tensor
) -> torch.Tensor:
    """Total variation (default form): mean over windows and t of
    ``sum_i ||W_dec[i]|| * |f_t[i] - f_{t+s}[i]|``.

    An L1 penalty on *changes*: a latent that flickers on for one position pays about
    twice its L1, one that stays on pays only for its changes. Weighted by decoder norms
    like upstream's L1, so shrinking ``f`` while growing ``W_dec`` does not lower it.
    (Subgradient 0 where two consecutive activations are equal.)
    """
    return _VariationPenalty.apply(feature_acts, decoder_norms, window, stride)


def normalized_penalty(feature_acts: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """mean over windows and t of ``||f_t - f_{t+s}||^2 / (||f_t||^2 + ||f_{t+s}||^2 + eps)``.

    Scale-free (in [0, 2]) and cheap: computed from each window's ``w x w`` Gram matrix
    (one batched product reading the latents once, no ``N x d_sae`` temporary). Its
    weakness, measured: an always-on large latent inflates every denominator, so a large
    coefficient buys consistency with a dense latent (L1 rises) rather than with
    persistent features. Two all-zero rows count as consistent (0).
    """
    f = feature_acts.reshape(-1, window, feature_acts.shape[-1])
    gram = torch.bmm(f, f.transpose(1, 2)).float()  # (n_windows, w, w)
    sq = gram.diagonal(dim1=1, dim2=2)
    dot = gram.diagonal(offset=stride, dim1=1, dim2=2)
    total = sq[:, :-stride] + sq[:, stride:]
    return ((total - 2 * dot).clamp_min(0) / (total + EPS)).mean()


LOSS_FORMS = ("tv", "normalized")


def temporal_consistency_loss(ctx: LossContext) -> torch.Tensor:
    """Loss term ``temporal_consistency``: :func:`variation_penalty` (``temporal_loss_form=tv``,
    default) or :func:`normalized_penalty` (``temporal_loss_form=normalized``)."""
    window, stride = window_settings(ctx)
    form = str(ctx.option("temporal_loss_form", "tv"))
    codes = codes_of(ctx.feature_acts)  # a sparse step: the active entries
    if form == "tv":
        norms = ctx.sae.W_dec.norm(dim=1)
        if codes is not None:
            return window_variation(codes, window, stride, norms)
        loss = variation_penalty(ctx.feature_acts, window, stride, norms)
    elif form == "normalized":
        acts = ctx.feature_acts if codes is None else codes.dense()
        loss = normalized_penalty(acts, window, stride)
    else:
        raise ValueError(f"temporal_loss_form must be one of {LOSS_FORMS}, got {form!r}")
    return loss


def contrastive_penalty(
    feature_acts: torch.Tensor, window: int, fraction: float, temperature: float, stride: int = 1
) -> torch.Tensor:
    """Window InfoNCE (this project's variant; *not* the loss of Bhalla et al.'s T-SAE).

    The first ``round(fraction * d_sae)`` latents form a slice (in a per-token SAE an
    arbitrary subset of latents). For each adjacent pair (t-1, t) inside a window, the
    slice at t must pick the slice at t-1 of its own window among the slices at t-1 of
    every window in the batch at the same offset (cosine similarity / temperature,
    cross-entropy in that one direction), averaged over the ``window - 1`` offsets. With
    ``stride`` s the pairs are (t, t+s), averaged over ``window - s`` offsets.
    Bhalla et al.'s loss (the ``tsae`` architecture) differs: raw dot products, no
    temperature, symmetric, all pairs of the batch as negatives, on the first group of a
    Matryoshka BatchTopK SAE.

    On CPU, for sparse ReLU codes, the similarities are summed from the non-zero codes
    (:mod:`.contrastive`: same loss and, through the ReLU, same parameter gradients, at a
    fraction of the dense products' cost); otherwise as dense products.
    """
    d_sae = feature_acts.shape[-1]
    k = max(1, min(d_sae, round(fraction * d_sae)))
    if sparse_path_applies(feature_acts, k):
        return SparseWindowInfoNCE.apply(feature_acts, k, window, stride, temperature)
    return dense_window_infonce(feature_acts, window, k, temperature, stride)


def temporal_contrastive_loss(ctx: LossContext) -> torch.Tensor:
    """Loss term ``temporal_contrastive`` (see :func:`contrastive_penalty`)."""
    window, stride = window_settings(ctx)
    fraction = float(ctx.option("temporal_contrastive_fraction", 0.2))
    temperature = float(ctx.option("temporal_contrastive_temperature", 0.1))
    if not 0 < fraction <= 1:
        raise ValueError(f"temporal_contrastive_fraction must be in (0, 1], got {fraction}")
    if not temperature > 0:
        raise ValueError(f"temporal_contrastive_temperature must be > 0, got {temperature}")
    if ctx.feature_acts.shape[0] // window < 2:
        raise BatchLayoutError(
            "temporal_contrastive needs at least 2 windows per batch for negatives; "
            "raise train_batch_size_tokens (or batch_size)"
        )
    return contrastive_penalty(ctx.feature_acts, window, fraction, temperature, stride)
