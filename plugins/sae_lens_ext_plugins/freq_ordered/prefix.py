"""Prefix reconstruction: every prefix of the latent order is trained to reconstruct.

The ``prefix_reconstruction`` loss term is the mean reconstruction loss of
reconstructions that keep only the first ``k`` latents of the *current* order
(with ``freq_ordered``'s periodic sort, the ``k`` most frequent ones)::

    L_prefix = mean_{k in K} mean_rows || x - (acts[:, :k] @ W_dec[:k] + b_dec) ||^2

``K`` is drawn afresh every step: ``prefix_samples`` lengths from the truncated
power law ``p(k) ~ k^-prefix_exponent`` on ``[prefix_min_fraction * d_sae, d_sae)``
(exponent 1: log-uniform, 0: uniform), stratified (one draw from each of
``prefix_samples`` equal-probability slices). Over training every prefix length in
that range is trained: nested dropout (Rippel et al. 2014) and random-prefix
Matryoshka SAEs (Nabeshima 2024, truncated Pareto prefix lengths), on a batch
rather than a row basis.

Cost. A prefix reconstruction is a partial sum of the decoder product. An SAE with
:class:`NestedDecodeMixin` decodes block by block at the drawn lengths (one
``addmm`` per block, the blocks' widths adding up to ``d_sae``), so the prefix
reconstructions are running sums it computes anyway: no decoder pass is added,
forward or backward, only element-wise work on ``prefix_samples`` tensors of
shape ``N x d_in``. On another architecture (``loss_terms="prefix_reconstruction"``)
the term computes the running sums itself, up to the longest drawn prefix (at most
one more decoder pass).
"""

from __future__ import annotations

import functools
import itertools
import operator
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from sae_lens_ext.api import (
    LossContext,
    codes_of,
    decode_sparse,
    parse_options,
    term_option,
)

PREFIX_TERM = "prefix_reconstruction"
PREFIX_OPTIONS = ("prefix_samples", "prefix_min_fraction", "prefix_exponent")
DEFAULTS = {"prefix_samples": 4, "prefix_min_fraction": 0.05, "prefix_exponent": 0.5}
# normalize_activations modes whose output transform is stateful (used once per batch)
RUNTIME_NORMS = ("constant_norm_rescale", "layer_norm")


@dataclass(frozen=True)
class PrefixSampler:
    """Draws prefix lengths: ``samples`` per step from ``p(k) ~ k^-exponent`` on
    ``[min_fraction * d_sae, d_sae)``, one per equal-probability slice."""

    samples: int
    min_fraction: float
    exponent: float

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"prefix_samples must be >= 1, got {self.samples}")
        if not 0.0 < self.min_fraction < 1.0:
            raise ValueError(f"prefix_min_fraction must be in (0, 1), got {self.min_fraction}")
        if not self.exponent >= 0.0:
            raise ValueError(f"prefix_exponent must be >= 0, got {self.exponent}")

    def quantile(self, u: float, d_sae: int) -> float:
        """Inverse CDF of the truncated power law at ``u`` in [0, 1)."""
        lo, hi = max(1.0, self.min_fraction * d_sae), float(d_sae)
        if abs(self.exponent - 1.0) < 1e-9:
            return lo * (hi / lo) ** u
        e = 1.0 - self.exponent
        return (lo**e + u * (hi**e - lo**e)) ** (1.0 / e)

    def lengths(self, d_sae: int, rng: random.Random | TorchUniform) -> list[int]:
        """Sorted distinct prefix lengths in ``[1, d_sae)``."""
        draws = (
            self.quantile((g + rng.random()) / self.samples, d_sae) for g in range(self.samples)
        )
        return sorted({min(d_sae - 1, max(1, int(k))) for k in draws})


def prefix_sampler(sae: Any, options: dict[str, str]) -> PrefixSampler:
    """The sampler of ``sae``: its config fields, else ``loss_term_options``, else defaults."""

    def option(key: str) -> float:
        return float(term_option(sae.cfg, options, key, DEFAULTS[key]))

    return PrefixSampler(
        samples=int(option("prefix_samples")),
        min_fraction=option("prefix_min_fraction"),
        exponent=option("prefix_exponent"),
    )


class TorchUniform:
    """Uniform draws from torch's global CPU generator, which a run's checkpoint saves
    and ``torch.manual_seed`` seeds: a resumed run draws the prefixes it would have."""

    def random(self) -> float:
        return float(torch.rand((), dtype=torch.float64))


def prefix_rng(sae: Any) -> random.Random | TorchUniform:
    """The generator of prefix lengths: ``sae._prefix_rng`` if set (tests), else torch's."""
    return getattr(sae, "_prefix_rng", None) or TorchUniform()


class _RunningSums(torch.autograd.Function):
    """``out_g = b + sum_{h <= g} acts[:, block h] @ W[block h]`` for consecutive blocks.

    The backward pass costs what one decoder product's does: with ``R_g`` the sum of the
    output gradients of blocks ``g`` onwards, block ``g`` gets ``R_g @ W_g^T`` (acts) and
    ``acts_g^T @ R_g`` (W), each written straight into its slice of the gradient."""

    @override
    @staticmethod
    def forward(ctx: Any, acts: torch.Tensor, W: torch.Tensor, b: torch.Tensor, edges: list[int]):
        ctx.save_for_backward(acts, W)
        ctx.edges, ctx.b_dtype = edges, b.dtype
        out, outs = b, []
        for lo, hi in itertools.pairwise(edges):
            out = torch.addmm(out, acts[:, lo:hi], W[lo:hi])
            outs.append(out)
        return tuple(outs)

    @override
    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None):
        acts, W = ctx.saved_tensors
        edges, (need_acts, need_W, need_b, _) = ctx.edges, ctx.needs_input_grad
        dtype = next(g.dtype for g in grads if g is not None)  # autocast: the products' dtype
        acts_c, W_c = acts.to(dtype), W.to(dtype)
        grad_acts = acts.new_empty(acts.shape, dtype=dtype) if need_acts else None
        grad_W = W.new_empty(W.shape, dtype=dtype) if need_W else None
        R: torch.Tensor | None = None
        written = edges[-1]  # latents from here on get a zero gradient
        for g in reversed(range(len(grads))):
            grad = grads[g]
            if grad is not None:
                R = grad if R is None else R + grad
            lo, hi = edges[g], edges[g + 1]
            if R is None:
                written = lo
                continue
            if grad_acts is not None:
                torch.mm(R, W_c[lo:hi].t(), out=grad_acts[:, lo:hi])
            if grad_W is not None:
                torch.mm(acts_c[:, lo:hi].t(), R, out=grad_W[lo:hi])
        if grad_acts is not None:
            grad_acts[:, written:].zero_()
        if grad_W is not None:
            grad_W[written:].zero_()
        grad_b = R.sum(0).to(ctx.b_dtype) if need_b and R is not None else None
        return (
            grad_acts.to(acts.dtype) if grad_acts is not None else None,
            grad_W.to(W.dtype) if grad_W is not None else None,
            grad_b,
            None,
        )


def running_reconstructions(
    feature_acts: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    lengths: Sequence[int],
    full: bool = True,
) -> list[torch.Tensor]:
    """``acts[:, :k] @ W_dec[:k] + b_dec`` for each ``k`` in ``lengths`` (increasing), then
    (``full``) the whole reconstruction, as running sums of block products: one decoder
    pass in all, forward and backward (``lengths[-1] / d_sae`` of one without ``full``). On a
    sparse step, from the active entries (:func:`sae_lens_ext.training.sparse.decode_sparse`)."""
    d_sae = feature_acts.shape[-1]
    edges = [0, *lengths, d_sae] if full else [0, *lengths]
    codes = codes_of(feature_acts)
    if codes is not None:
        return decode_sparse(codes, W_dec, b_dec, edges=edges)
    acts = feature_acts.reshape(-1, d_sae)
    return list(_RunningSums.apply(acts, W_dec, b_dec, edges))


@dataclass
class PrefixStash:
    """What a nested decode computed for one batch: the prefix reconstructions, already
    mapped to output space like the SAE's output."""

    feature_acts: torch.Tensor
    lengths: list[int]
    recons: list[torch.Tensor]


if TYPE_CHECKING:  # a mixin of plugin training SAEs: type-checked as one
    from sae_lens_ext.api import LossTermsMixin

    _TrainingBase = LossTermsMixin[Any]
else:
    _TrainingBase = object


class NestedDecodeMixin(_TrainingBase):
    """Training-time decode in blocks at freshly drawn prefix lengths, keeping the
    prefix reconstructions for the ``prefix_reconstruction`` term. The output equals
    ``acts @ W_dec + b_dec`` (up to float summation order) followed by upstream's
    output hooks, which must be what the architecture's own decode computes. Put it
    before the architecture's classes in the bases."""

    _prefix_stash: PrefixStash | None = None
    _prefix_on: bool | None = None

    def prefix_decode_enabled(self, feature_acts: torch.Tensor) -> bool:
        if self._prefix_on is None:
            names = {spec.name for spec in self.cfg.enabled_loss_terms()}
            self._prefix_on = PREFIX_TERM in names
        return (
            self._prefix_on
            and self.training
            and torch.is_grad_enabled()
            and feature_acts.ndim == 2
            and not self.hook_z_reshaping_mode
        )

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        if not self.prefix_decode_enabled(feature_acts):
            return super().decode(feature_acts)
        return self.nested_decode(feature_acts)

    @torch.compiler.disable  # prefix lengths are drawn afresh each step: not one graph
    def nested_decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Decode in blocks at freshly drawn prefix lengths, stashing the prefixes."""
        sampler = prefix_sampler(self, parse_options(self.cfg.loss_term_options))
        lengths = sampler.lengths(feature_acts.shape[-1], prefix_rng(self))
        recons = running_reconstructions(feature_acts, self.W_dec, self.b_dec, lengths)
        *prefixes, full = recons
        sae_out = self.hook_sae_recons(full)
        if self.cfg.normalize_activations in RUNTIME_NORMS:
            # a stateful per-row affine map, usable once: apply it to all at once
            stacked = self.run_time_activation_norm_fn_out(torch.stack([*prefixes, sae_out]))
            *prefixes, sae_out = stacked.unbind(0)
        else:
            sae_out = self.run_time_activation_norm_fn_out(sae_out)
        self._prefix_stash = PrefixStash(feature_acts, lengths, prefixes)
        return self.reshape_fn_out(sae_out, self.d_head)


class _MeanSquaredError(torch.autograd.Function):
    """``mean_g mean_rows ||recon_g - x||^2`` in few memory passes: a difference and a dot
    product per prefix forward, one scaled copy per prefix backward."""

    @override
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, *recons: torch.Tensor) -> torch.Tensor:
        errors = [r - x for r in recons]
        total = functools.reduce(operator.add, [torch.dot(e.reshape(-1), e.reshape(-1)) for e in errors])
        ctx.save_for_backward(*errors)
        ctx.scale = 1.0 / (len(recons) * x.shape[0])
        ctx.dtypes = [r.dtype for r in recons]
        return total * ctx.scale

    @override
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        errors = ctx.saved_tensors
        c = grad * (2.0 * ctx.scale)
        grads = [(e * c.to(e.dtype)).to(dt) for e, dt in zip(errors, ctx.dtypes, strict=True)]
        grad_x = -functools.reduce(operator.add, grads) if ctx.needs_input_grad[0] else None
        return (grad_x, *grads)


def prefix_mse(sae: Any, recons: Sequence[torch.Tensor], sae_in: torch.Tensor) -> torch.Tensor:
    """Mean over prefixes of SAE-Lens's reconstruction loss (``mse_loss_fn`` summed over
    ``d_in``, averaged over rows), the form of upstream Matryoshka's inner losses."""
    from sae_lens.saes.sae import mse_loss  # not at import time: sae_lens loads this plugin

    x = sae_in.reshape(-1, sae_in.shape[-1])
    if getattr(sae, "mse_loss_fn", mse_loss) is mse_loss:  # the plain squared error: fused
        return _MeanSquaredError.apply(x, *recons)
    total = sum(sae.mse_loss_fn(r, x).sum(-1).mean() for r in recons)
    return total / len(recons)


def prefix_reconstruction_loss(ctx: LossContext) -> torch.Tensor:
    """Mean reconstruction loss of this step's prefixes (see the module docstring)."""
    sae, stash = ctx.sae, None
    if isinstance(sae, NestedDecodeMixin):  # the stash is used once
        stash, sae._prefix_stash = sae._prefix_stash, None
    if stash is not None and stash.feature_acts is ctx.feature_acts:
        return prefix_mse(sae, stash.recons, ctx.step_input.sae_in)
    # no nested decode: compute the prefix reconstructions here
    if getattr(sae.cfg, "normalize_activations", "none") in RUNTIME_NORMS:
        raise ValueError(
            f"prefix_reconstruction: normalize_activations={sae.cfg.normalize_activations!r} "
            f"is only supported on architectures that decode in blocks (freq_ordered); "
            "use 'none' or 'expected_average_only_in'"
        )
    lengths = prefix_sampler(sae, dict(ctx.options)).lengths(
        ctx.feature_acts.shape[-1], prefix_rng(sae)
    )
    recons = running_reconstructions(ctx.feature_acts, sae.W_dec, sae.b_dec, lengths, full=False)
    return prefix_mse(sae, recons, ctx.step_input.sae_in)
