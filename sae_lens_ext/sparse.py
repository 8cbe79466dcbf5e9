"""Sparse training steps: one dense product per step for SAEs whose codes are sparse.

After a ReLU, JumpReLU, TopK or BatchTopK, only L0 of ``d_sae`` codes of a row are non-zero
(L0 20-100 against ``d_sae`` 16k-64k). A training step then needs one dense product, the
encoder's forward (every latent's pre-activation); the decoder's forward, the decoder-weight
gradient, the gradient of the pre-activations, the encoder-weight gradient and the gradient of
``b_dec`` through the encoder touch only the active entries. This module computes them from
the active entries, on any device, with plain torch operations:

- :func:`encode_sparse`: the active entries of a batch (:class:`SparseCodes`) found in the
  pre-activations an architecture computed (without recording a gradient), whose values carry
  the gradient of the affine map that produced them (:class:`AffineMap`) - the backward costs
  two sparse products instead of two dense ones;
- :func:`decode_sparse`: the decoder's output (and, with ``edges``, the running sums of
  consecutive latent blocks: prefix and Matryoshka reconstructions) as a bag-of-rows sum
  (``embedding_bag``); its backward is a sampled product and a sparse product;
- penalties read from the entries: :func:`decoder_weighted_l1`, :meth:`SparseCodes.firing`,
  :func:`window_variation`, :func:`gram`;
- :class:`SparseStepSwitch` chooses each step's path from the measured code density
  (``sparse_step``: ``"auto"``, ``"dense"`` or ``"sparse"``), and :class:`SparseStepMixin`
  wires it into a :class:`~sae_lens_ext.training.LossTermTrainingSAE`.

Exact: the entries and their values are read from the same pre-activations the dense path
computes, so both paths select the same codes; every gradient is the dense path's restricted
to where the activation passes a gradient (elsewhere the dense path's is zero), up to float
summation order. A loss term that reads the dense codes still gets them
(``LossTerm.sparse_aware=False``: a dense tensor whose backward gathers at the entries), and a
term that differentiates the dense pre-activations gets the dense encoder backward: slower,
never wrong.

The architecture says how its pre-activations depend on its parameters
(:class:`AffineMap`); options that couple all latents (a LayerNorm over latents) make the
step dense, said once.

Host reads. Where codes have a fixed count (TopK, BatchTopK) nothing in a step reads a value
on the host. For ReLU and JumpReLU codes the number of active entries sizes the step's
buffers: on the CPU that is free, on an accelerator it is one integer read back per sparse
step (:func:`active_entries`). The switch measures density on dense steps every
:data:`CHECK_EVERY` steps, without waiting for the device (:class:`_DeviceCount`).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

SparseStepMode = Literal["auto", "dense", "sparse"]
MODES: tuple[str, ...] = ("auto", "dense", "sparse")

#: ``sparse_step="auto"`` takes the sparse path while the measured code density (active
#: entries / (rows x d_sae)) is below the threshold of the device type the step runs on:
#: the crossover ``benchmarks/step_benchmark.py`` measured there (docs/benchmarks-speed.md),
#: with a margin. A device type without one (CUDA: not measured yet; ``gpu_speed.sh``
#: measures it) keeps the dense step in auto mode; ``sparse_step="sparse"`` forces it.
DENSITY_THRESHOLDS: dict[str, float] = {"cpu": 0.05}
#: ... and goes back to the dense path above ``HYSTERESIS`` times it.
HYSTERESIS = 1.5
#: ... and stays dense for steps smaller than this (rows x ``d_in`` x ``d_sae``, one dense
#: product's multiply-adds), where the sparse step's fixed costs outweigh what it saves
#: (measured on CPU: break-even at batch 1024 x ``d_in`` 64 x ``d_sae`` 512).
MIN_PRODUCT = 2**25
#: On dense steps the density is measured every this many steps.
CHECK_EVERY = 10

_CODES_ATTRIBUTE = "_sae_lens_ext_sparse_codes"


# --- entries ---------------------------------------------------------------------------


@dataclass
class SparseCodes:
    """The codes of a batch as entries: ``codes[rows[j], cols[j]] = values[j]``, every other
    code 0. Entries are in row-major order (``rows`` non-decreasing, ``cols`` increasing within
    a row) and unique. ``values`` carry the gradient (a value may be 0: JumpReLU keeps the
    entries whose threshold gradient is non-zero).

    Args:
        rows, cols: int64 indices of the entries.
        values: their codes.
        n_rows, n_latents: the dense shape.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    n_rows: int
    n_latents: int
    _offsets: torch.Tensor | None = field(default=None, repr=False)

    @property
    def nnz(self) -> int:
        """Number of entries (a host value: the entries' shape)."""
        return self.rows.shape[0]

    @property
    def density(self) -> float:
        return self.nnz / max(self.n_rows * self.n_latents, 1)

    @property
    def offsets(self) -> torch.Tensor:
        """Row offsets (``n_rows + 1``): row ``r``'s entries are ``offsets[r]:offsets[r+1]``."""
        if self._offsets is None:
            self._offsets = row_offsets(self.rows, self.n_rows)
        return self._offsets

    def with_values(self, values: torch.Tensor) -> SparseCodes:
        """The same entries with other values (e.g. scaled)."""
        return SparseCodes(self.rows, self.cols, values, self.n_rows, self.n_latents, self._offsets)

    def dense(self) -> torch.Tensor:
        """The ``(n_rows, n_latents)`` codes, differentiable (the gradient is gathered at the
        entries: elsewhere the activation passes none)."""
        return _Densify.apply(self.values, self.rows, self.cols, self.n_rows, self.n_latents)

    def coo(self) -> torch.Tensor:
        """The codes as a coalesced sparse COO tensor (detached), with these codes attached
        (:func:`codes_of`): what a step reports as its ``feature_acts``."""
        indices = torch.stack([self.rows, self.cols])
        coo = torch.sparse_coo_tensor(
            indices,
            self.values.detach(),
            (self.n_rows, self.n_latents),
            is_coalesced=True,
            check_invariants=False,
        )
        return attach_codes(coo, self)

    def column_sums(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_rows codes`` (or of other per-entry ``values``), a float32 ``d_sae`` vector."""
        v = self.values if values is None else values
        out = torch.zeros(self.n_latents, dtype=torch.float32, device=v.device)
        return out.index_add(0, self.cols, v.float())

    def firing(self) -> torch.Tensor:
        """How many rows each latent is non-zero on (float32 ``d_sae`` vector, no gradient)."""
        return self.column_sums(self.values.detach().ne(0).float())

    def row_sums(self, values: torch.Tensor) -> torch.Tensor:
        """``sum_latents`` of per-entry ``values``, one per row."""
        out = torch.zeros(self.n_rows, dtype=values.dtype, device=values.device)
        return out.index_add(0, self.rows, values)

    def first_latents(self, width: int) -> SparseCodes:
        """The codes of latents ``[0, width)`` on a ``width + 1``-latent grid: entries of later
        latents keep their place, with value 0, in the extra column ``width`` (static shapes:
        no read of how many there are)."""
        inside = self.cols < width
        values = torch.where(inside, self.values, torch.zeros_like(self.values))
        return SparseCodes(
            self.rows, self.cols.clamp(max=width), values, self.n_rows, width + 1, self._offsets
        )


def row_offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR row offsets of sorted row indices (no value read on the host)."""
    bounds = torch.arange(n_rows + 1, device=rows.device, dtype=rows.dtype)
    return torch.searchsorted(rows, bounds)


def attach_codes(tensor: torch.Tensor, codes: SparseCodes) -> torch.Tensor:
    """Mark ``tensor`` (a step's ``feature_acts``) as holding ``codes``; returns it."""
    setattr(tensor, _CODES_ATTRIBUTE, codes)
    return tensor


def codes_of(feature_acts: Any) -> SparseCodes | None:
    """The :class:`SparseCodes` behind a step's ``feature_acts``, or None on a dense step.
    Loss terms that declare ``sparse_aware=True`` read the codes through this."""
    return getattr(feature_acts, _CODES_ATTRIBUTE, None)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _csr(offsets: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]):
    with warnings.catch_warnings():  # torch calls CSR support "beta"; what is used here is tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(offsets, cols, values, shape, check_invariants=False)


def _transposed_product(csr: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``csr.T @ dense`` (a ``(n_cols, d)`` dense result)."""
    return csr.t().to_sparse_csr() @ dense


def _sampled_product(
    pattern: torch.Tensor, left: torch.Tensor, right: torch.Tensor
) -> torch.Tensor:
    """``(left @ right)`` at the entries of the CSR ``pattern``, in its entry order."""
    return torch.sparse.sampled_addmm(pattern, left, right, beta=0.0).values()


# --- autograd functions ---------------------------------------------------------------------


class _Densify(torch.autograd.Function):
    """Entries -> dense codes; the backward gathers the dense gradient at the entries."""

    @staticmethod
    def forward(ctx: Any, values, rows, cols, n_rows: int, n_latents: int):  # type: ignore[override]
        ctx.save_for_backward(rows, cols)
        out = values.new_zeros(n_rows, n_latents)
        return out.index_put_((rows, cols), values)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        rows, cols = ctx.saved_tensors
        return grad[rows, cols], None, None, None, None


class _AffineAt(torch.autograd.Function):
    """Values of an affine map's output ``h = sum_t c_t (inputs_t @ W_t) + bias`` at given
    entries (``values``: read from ``h`` computed beforehand). The backward takes the gradient at the
    entries only (a sparse ``G``): ``dW_t = c_t inputs_t^T G``, ``dbias = colsum(G)``,
    ``dinputs_t = c_t G W_t^T`` and, for a ``shift`` subtracted from every (detached) input,
    ``dshift = -sum_t c_t W_t colsum(G)``."""

    @staticmethod
    def forward(ctx: Any, spec, rows, cols, offsets, values, shift, bias, *tensors):  # type: ignore[override]
        n_terms = len(spec.coefficients)
        ctx.spec, ctx.n_terms = spec, n_terms
        ctx.save_for_backward(rows, cols, offsets, shift, bias, *tensors)
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        _, cols, offsets, shift, bias, *tensors = ctx.saved_tensors
        spec, n = ctx.spec, ctx.n_terms
        inputs, weights = tensors[:n], tensors[n:]
        need = ctx.needs_input_grad
        need_shift, need_bias = need[5], need[6]
        need_inputs, need_weights = need[7 : 7 + n], need[7 + n :]
        dtype = _compute_dtype(grad, *weights)
        g = grad.to(dtype)
        G = _csr(offsets, cols, g, (spec.n_rows, spec.n_latents))
        colsum = None
        if need_bias or need_shift:
            colsum = torch.zeros(spec.n_latents, dtype=dtype, device=g.device).index_add_(
                0, cols, g
            )
        grad_shift = grad_bias = None
        if need_bias:
            grad_bias = colsum.to(bias.dtype)  # type: ignore[union-attr]
        grad_inputs: list[torch.Tensor | None] = [None] * n
        grad_weights: list[torch.Tensor | None] = [None] * n
        for t, (x, W, c) in enumerate(zip(inputs, weights, spec.coefficients, strict=True)):
            if need_weights[t]:  # (n_latents, d_t) -> W's (d_t, n_latents) layout
                gW = _transposed_product(G, x.to(dtype)).t()
                grad_weights[t] = (gW * c if c != 1.0 else gW).to(W.dtype).contiguous()
            if need_inputs[t]:
                gx = G @ W.to(dtype).t()
                grad_inputs[t] = (gx * c if c != 1.0 else gx).to(x.dtype)
            if need_shift:
                term = W.to(dtype) @ colsum * c
                grad_shift = -term if grad_shift is None else grad_shift - term
        if grad_shift is not None:
            grad_shift = grad_shift.to(shift.dtype)
        return (None, None, None, None, None, grad_shift, grad_bias, *grad_inputs, *grad_weights)


class _DenseHidden(torch.autograd.Function):
    """The dense pre-activations ``hidden = unscaled * scale`` (computed beforehand) with the
    dense encoder backward: for a loss term that differentiates them (slow; exact)."""

    @staticmethod
    def forward(ctx: Any, spec, hidden, unscaled, scale, shift, bias, *tensors):  # type: ignore[override]
        ctx.spec, ctx.n_terms = spec, len(spec.coefficients)
        ctx.save_for_backward(unscaled, scale, shift, bias, *tensors)
        return hidden  # returned as a view: no copy

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        unscaled, scale, shift, bias, *tensors = ctx.saved_tensors
        n, spec, need = ctx.n_terms, ctx.spec, ctx.needs_input_grad
        inputs, weights = tensors[:n], tensors[n:]
        dtype = _compute_dtype(grad, *weights)
        g = grad.reshape(-1, grad.shape[-1]).to(dtype)
        grad_scale = None
        if spec.scaled:
            if need[3]:
                grad_scale = (g * unscaled.to(dtype)).sum(0).to(scale.dtype)
            g = g * scale.to(dtype)
        colsum = g.sum(0)
        grad_bias = colsum.to(bias.dtype) if need[5] else None
        grad_shift = None
        grad_inputs: list[torch.Tensor | None] = [None] * n
        grad_weights: list[torch.Tensor | None] = [None] * n
        for t, (x, W, c) in enumerate(zip(inputs, weights, spec.coefficients, strict=True)):
            if need[6 + n + t]:
                grad_weights[t] = (x.reshape(-1, x.shape[-1]).to(dtype).t() @ g * c).to(W.dtype)
            if need[6 + t]:
                grad_inputs[t] = (g @ W.to(dtype).t() * c).reshape(x.shape).to(x.dtype)
            if need[4]:
                term = W.to(dtype) @ colsum * c
                grad_shift = -term if grad_shift is None else grad_shift - term
        if grad_shift is not None:
            grad_shift = grad_shift.to(shift.dtype)
        return (None, None, None, grad_scale, grad_shift, grad_bias, *grad_inputs, *grad_weights)


class _BagDecode(torch.autograd.Function):
    """``out[b] = sum_{j in bag b} values[j] * W[cols[j]]`` (bags = consecutive entries,
    ``offsets``). Backward: ``dvalues[j] = <dout[bag j], W[cols[j]]>`` (a sampled product) and
    ``dW = A^T dout`` (a sparse product), ``A`` the ``(n_bags, n_latents)`` entry matrix."""

    @staticmethod
    def forward(ctx: Any, values, W, cols, offsets, n_bags: int):  # type: ignore[override]
        dtype = _compute_dtype(values, W)
        v, Wc = values.to(dtype), W.to(dtype)
        ctx.save_for_backward(v, Wc, cols, offsets)
        ctx.n_bags, ctx.dtypes = n_bags, (values.dtype, W.dtype)
        with torch.autocast(W.device.type, enabled=False):
            return F.embedding_bag(
                cols, Wc, offsets, mode="sum", per_sample_weights=v, include_last_offset=True
            )

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        v, W, cols, offsets = ctx.saved_tensors
        A = _csr(offsets, cols, v, (ctx.n_bags, W.shape[0]))
        g = grad.to(W.dtype)
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_values = _sampled_product(A, g, W.t()).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            grad_W = _transposed_product(A, g).to(ctx.dtypes[1])
        return grad_values, grad_W, None, None, None


class _Gram(torch.autograd.Function):
    """``A @ B^T`` for two sets of codes on the same latents (a dense ``(rows_a, rows_b)``
    matrix); backward by sampled products at each side's entries."""

    @staticmethod
    def forward(ctx: Any, va, vb, a_cols, a_offsets, b_rows, b_cols, b_offsets, shape):  # type: ignore[override]
        n_a, n_b, width = shape
        dtype = _compute_dtype(va, vb)
        va, vb = va.to(dtype), vb.to(dtype)
        B_t = va.new_zeros(width, n_b).index_put_((b_cols, b_rows), vb)  # B^T, contiguous
        ctx.save_for_backward(va, vb, a_cols, a_offsets, b_cols, b_offsets, B_t)
        ctx.shape = shape
        with torch.autocast(va.device.type, enabled=False):
            return _csr(a_offsets, a_cols, va, (n_a, width)) @ B_t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        va, vb, a_cols, a_offsets, b_cols, b_offsets, B_t = ctx.saved_tensors
        n_a, n_b, width = ctx.shape
        g = grad.to(va.dtype)
        A = _csr(a_offsets, a_cols, va, (n_a, width))
        grad_a = _sampled_product(A, g, B_t.t()) if ctx.needs_input_grad[0] else None
        grad_b = None
        if ctx.needs_input_grad[1]:
            A_dense = A.to_dense()
            grad_b = _sampled_product(_csr(b_offsets, b_cols, vb, (n_b, width)), g.t(), A_dense)
        return grad_a, grad_b, None, None, None, None, None, None


# --- activations -----------------------------------------------------------------------------


def active_entries(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major ``(rows, cols)`` of the true entries of a 2-D mask. Their number sizes the
    step's buffers: read on the host (free on the CPU; one integer from an accelerator)."""
    rows, cols = mask.nonzero().unbind(1)
    return rows.contiguous(), cols.contiguous()


@dataclass(frozen=True)
class ReLU:
    """``max(h, 0)``: entries where ``h > 0``."""

    def select(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return active_entries(hidden > 0)

    def apply(self, pre: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return pre.relu()


@dataclass(frozen=True)
class JumpReLU:
    """SAE-Lens's JumpReLU, ``h * (h > threshold)``, with its straight-through threshold
    gradient (``jumprelu_bandwidth``, ``jumprelu_ste_to_input``): entries where
    ``h > threshold - bandwidth / 2`` (the active ones and those the estimator reaches)."""

    threshold: torch.Tensor
    bandwidth: float
    ste_to_input: bool = False

    def select(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        threshold = self.threshold.detach().to(hidden.dtype)
        return active_entries(hidden > threshold - self.bandwidth / 2)

    def apply(self, pre: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return _JumpReLUAt.apply(pre, self.threshold, cols, self.bandwidth, self.ste_to_input)


class _JumpReLUAt(torch.autograd.Function):
    """Upstream's ``JumpReLU`` on entries: threshold of latent ``cols[j]``; its gradient sums
    the straight-through estimate over the entries of each latent."""

    @staticmethod
    def forward(ctx: Any, pre, threshold, cols, bandwidth: float, ste_to_input: bool):  # type: ignore[override]
        t = threshold.to(pre.dtype)[cols]
        ctx.save_for_backward(pre, t, cols)
        ctx.bandwidth, ctx.ste, ctx.threshold_shape = bandwidth, ste_to_input, threshold.shape
        ctx.threshold_dtype = threshold.dtype
        return pre * (pre > t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        pre, t, cols = ctx.saved_tensors
        bw = ctx.bandwidth
        window = (((pre - t) / bw > -0.5) & ((pre - t) / bw < 0.5)).to(pre.dtype)
        ste = (t / bw) * window * grad
        grad_threshold = torch.zeros(ctx.threshold_shape, dtype=ste.dtype, device=ste.device)
        grad_threshold = grad_threshold.index_add_(0, cols, -ste).to(ctx.threshold_dtype)
        grad_pre = (pre > t) * grad
        if ctx.ste:
            grad_pre = grad_pre + ste
        return grad_pre, grad_threshold, None, None, None


@dataclass(frozen=True)
class TopK:
    """SAE-Lens's ``TopK``: the ``k`` largest pre-activations of each row, ReLU'd."""

    k: int

    def select(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_rows = hidden.shape[0]
        cols = torch.topk(hidden, self.k, dim=-1, sorted=False).indices.sort(dim=-1).values
        rows = torch.arange(n_rows, device=hidden.device).unsqueeze(1).expand_as(cols)
        return rows.reshape(-1), cols.reshape(-1)

    def apply(self, pre: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return pre.relu()


@dataclass(frozen=True)
class BatchTopK:
    """SAE-Lens's ``BatchTopK``: the ``int(k * rows)`` largest ReLU'd pre-activations of the
    whole batch (the same ``torch.topk`` call, so the same entries, ties included)."""

    k: float

    def select(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_rows, n_latents = hidden.shape
        count = int(self.k * n_rows)
        index = _host_batch_topk(hidden, count) if hidden.device.type == "cpu" else None
        if index is None:
            flat = hidden.relu().flatten()
            index = torch.topk(flat, count, dim=-1).indices
        index = index.sort().values
        return index // n_latents, index % n_latents

    def apply(self, pre: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return pre.relu()


def _host_batch_topk(hidden: torch.Tensor, count: int) -> torch.Tensor | None:
    """On the CPU (where reading a value costs nothing): the flat indices of the ``count``
    largest positive entries of ``hidden``, found among the entries above a threshold taken
    from a sample, instead of a ``topk`` over every entry. None where that set is not unique
    (a tie at its boundary, or fewer positive entries than ``count``): then ``torch.topk``
    decides, as the dense step's does."""
    flat = hidden.reshape(-1)
    stride = max(1, flat.numel() // (8 * max(count, 1))) | 1  # odd: every latent sampled
    sample = flat[::stride]
    expect = 4 * count * sample.numel() // flat.numel() + 1  # ~4x the share we need
    if count == 0 or expect >= sample.numel():
        return None
    bound = torch.topk(sample, expect, sorted=False).values.min()
    if not bound > 0:
        return None
    candidates = (flat > bound).nonzero().flatten()
    if candidates.numel() <= count:
        return None
    top = torch.topk(flat[candidates], count + 1)  # sorted: the boundary is the last two
    if not top.values[count - 1] > top.values[count]:
        return None
    return candidates[top.indices[:count]]


Activation = ReLU | JumpReLU | TopK | BatchTopK


# --- encoding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AffineSpec:
    coefficients: tuple[float, ...]
    n_rows: int
    n_latents: int
    scaled: bool = False


@dataclass
class AffineMap:
    """How an architecture's pre-activations depend on its parameters:
    ``h = (sum_t coefficients[t] * inputs[t] @ weights[t] + bias) * scale``.

    Args:
        inputs: ``(rows, d_t)`` encoder inputs. Pass them detached with ``shift`` when they are
            ``x - shift`` for a constant ``x`` (SAE-Lens's ``x - b_dec``: see
            :func:`encoder_input`); an input that requires a gradient gets it (``G W^T``).
        weights: ``(d_t, d_sae)`` matrices (``W_enc``, ...).
        bias: ``(d_sae,)`` (``b_enc``).
        coefficients: one per term (default 1).
        shift: the parameter subtracted from every input (``b_dec``), or None.
        scale: a per-latent factor applied last (TopK's ``rescale_acts_by_decoder_norm``).
    """

    inputs: tuple[torch.Tensor, ...]
    weights: tuple[torch.Tensor, ...]
    bias: torch.Tensor
    coefficients: tuple[float, ...] = ()
    shift: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.coefficients:
            self.coefficients = (1.0,) * len(self.weights)
        if not len(self.inputs) == len(self.weights) == len(self.coefficients):
            raise ValueError("AffineMap: one input, weight and coefficient per term")

    def _spec(self, hidden: torch.Tensor) -> _AffineSpec:
        scaled = self.scale is not None
        return _AffineSpec(tuple(self.coefficients), hidden.shape[0], hidden.shape[1], scaled)

    def _shift(self, like: torch.Tensor) -> torch.Tensor:
        return self.shift if self.shift is not None else like.new_zeros(())

    def at(self, unscaled: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``h[rows, cols]`` (``unscaled``: the map's output before ``scale``), differentiable
        in every parameter through the entries only."""
        return self.at_values(unscaled.detach()[rows, cols], rows, cols)

    def at_values(
        self, values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`at` for values already read (the map's output before ``scale`` at the
        entries): e.g. entries of several batches, read from each one's pre-activations,
        through one map whose ``inputs`` stack those batches' rows (one backward for all)."""
        n_rows = self.inputs[0].shape[0]
        spec = _AffineSpec(
            tuple(self.coefficients), n_rows, self.bias.shape[0], self.scale is not None
        )
        offsets = row_offsets(rows, n_rows)
        out = _AffineAt.apply(
            spec, rows, cols, offsets, values, self._shift(values), self.bias,
            *self.inputs, *self.weights,
        )  # fmt: skip
        return out if self.scale is None else out * self.scale[cols]

    def dense(self, hidden: torch.Tensor, unscaled: torch.Tensor) -> torch.Tensor:
        """``hidden`` (the dense pre-activations, ``unscaled * scale``) made differentiable
        through the dense encoder backward."""
        spec = self._spec(unscaled)
        scale = self.scale if self.scale is not None else unscaled.new_zeros(())
        return _DenseHidden.apply(
            spec, hidden, unscaled, scale, self._shift(unscaled), self.bias,
            *self.inputs, *self.weights,
        )  # fmt: skip


def accumulate(total: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``total + term`` (type promotion included). Where no gradient is recorded it is written
    into ``total`` (a temporary of the caller's: a product's output), or into one converted
    copy of it: the same values, one batch x ``d_sae`` tensor fewer to allocate and write."""
    if torch.is_grad_enabled() and (total.requires_grad or term.requires_grad):
        return total + term
    dtype = torch.result_type(total, term)
    out = total if total.dtype == dtype else total.to(dtype)
    return out.add_(term)


def encoder_input(sae: Any, x: torch.Tensor, sae_in: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """``(input, shift)`` for an :class:`AffineMap` of an SAE-Lens SAE whose encoder reads
    ``sae_in = process_sae_in(x)`` (``x`` scaled, minus ``b_dec`` when
    ``apply_b_dec_to_input``): ``sae_in`` detached with ``shift=b_dec`` when ``x`` carries no
    gradient (``b_dec``'s gradient is then one ``d_in x d_sae`` product with the column sums
    instead of a sparse product per row), else ``sae_in`` itself."""
    if x.requires_grad:
        return sae_in, None
    shift = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
    return sae_in.detach(), shift


@dataclass
class SparseEncoding:
    """A batch's codes as entries, and its pre-activations (see :func:`encode_sparse`)."""

    codes: SparseCodes
    hidden_pre: torch.Tensor
    """Dense pre-activations; a gradient through them takes the dense encoder backward."""
    affine: AffineMap
    unscaled: torch.Tensor

    def pre_activations_at(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Pre-activations at other entries (row-major), differentiable through them only:
        e.g. an auxiliary loss's top dead latents."""
        return self.affine.at(self.unscaled, rows, cols)


@torch.compiler.disable  # entry counts vary from step to step: eager
def encode_sparse(
    hidden: torch.Tensor,
    affine: AffineMap,
    activation: Activation,
    unscaled: torch.Tensor | None = None,
) -> SparseEncoding:
    """The codes of a batch as entries, from ``hidden``: the pre-activations the architecture
    computed itself under ``torch.no_grad()`` (so both paths select the same entries), equal
    to ``affine``'s output. ``unscaled``: that output before ``affine.scale``, if any."""
    if hidden.dim() != 2:
        raise ValueError(f"encode_sparse: (rows, d_sae) pre-activations, got {tuple(hidden.shape)}")
    unscaled = hidden if unscaled is None else unscaled
    rows, cols = activation.select(hidden.detach())
    pre = affine.at(unscaled.detach(), rows, cols)
    values = activation.apply(pre, cols)
    codes = SparseCodes(rows, cols, values, hidden.shape[0], hidden.shape[1])
    hidden_pre = affine.dense(hidden.detach(), unscaled.detach())
    return SparseEncoding(codes, hidden_pre, affine, unscaled.detach())


# --- decoding and penalties ----------------------------------------------------------------


def _block_bags(codes: SparseCodes, edges: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Entries grouped by (row, latent block): bag ``row * blocks + block`` and its offsets."""
    blocks = len(edges) - 1
    if blocks == 1:
        return codes.rows, codes.offsets, codes.n_rows
    bags = codes.rows * blocks
    for edge in edges[1:-1]:  # the block of each entry (no bounds tensor copied to a device)
        bags = bags + (codes.cols >= edge)
    n_bags = codes.n_rows * blocks
    return bags, row_offsets(bags, n_bags), n_bags


@torch.compiler.disable
def decode_sparse(
    codes: SparseCodes,
    W_dec: torch.Tensor,
    bias: torch.Tensor | None = None,
    edges: list[int] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """``codes @ W_dec (+ bias)`` from the entries. With ``edges`` (``0 = e_0 < ... < e_n``,
    latent block bounds), the running sums ``codes[:, :e_g] @ W_dec[:e_g] (+ bias)`` for
    ``g = 1..n``, one decoder pass in all (prefix and Matryoshka reconstructions)."""
    blocks = edges if edges is not None else [0, codes.n_latents]
    if blocks[0] != 0 or any(b <= a for a, b in itertools.pairwise(blocks)):
        raise ValueError(f"decode_sparse: edges must increase from 0, got {blocks}")
    cols, values = codes.cols, codes.values
    if blocks[-1] < codes.n_latents:  # later latents count for nothing
        values = torch.where(cols < blocks[-1], values, torch.zeros_like(values))
    _, offsets, n_bags = _block_bags(codes, blocks)
    out = _BagDecode.apply(values, W_dec, cols, offsets, n_bags)
    if edges is None:
        return out if bias is None else out + bias
    parts = out.view(codes.n_rows, len(blocks) - 1, -1).unbind(1)
    total = parts[0] if bias is None else bias + parts[0]
    sums = [total]
    for part in parts[1:]:  # in the dense running sums' order: (b + P_1) + P_2 + ...
        total = total + part
        sums.append(total)
    return sums


def decoder_weighted_l1(codes: SparseCodes, norms: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """SAE-Lens's sparsity penalty ``mean_rows || codes * norms ||_p`` from the entries
    (float32 accumulation)."""
    weighted = (codes.values * norms[codes.cols]).abs().float()
    if p == 1:
        return weighted.sum() / max(codes.n_rows, 1)
    per_row = codes.row_sums(weighted.pow(p))
    return per_row.pow(1.0 / p).mean()


def gram(a: SparseCodes, b: SparseCodes) -> torch.Tensor:
    """``dense(a) @ dense(b).T`` (``(a.n_rows, b.n_rows)``), differentiable in both sides'
    values; ``a`` and ``b`` on the same latents."""
    if a.n_latents != b.n_latents:
        raise ValueError(f"gram: {a.n_latents} against {b.n_latents} latents")
    shape = (a.n_rows, b.n_rows, a.n_latents)
    return _Gram.apply(a.values, b.values, a.cols, a.offsets, b.rows, b.cols, b.offsets, shape)


@dataclass
class WindowPairs:
    """Entries of rows ``t`` and ``t + stride`` inside windows of ``window`` consecutive rows,
    matched by latent: ``partner[j]`` is the entry of the same latent at the other position
    (``matched[j]`` says whether there is one); ``left``/``right``: the entry is the earlier /
    later position of a pair."""

    left: torch.Tensor
    right: torch.Tensor
    partner_of_left: torch.Tensor
    left_matched: torch.Tensor
    partner_of_right: torch.Tensor
    right_matched: torch.Tensor
    pairs: int


def window_pairs(codes: SparseCodes, window: int, stride: int) -> WindowPairs:
    """Match each entry with the same latent's entry ``stride`` rows later / earlier in its
    window (sorted keys and binary search: no value read on the host)."""
    rows, cols, m = codes.rows, codes.cols, codes.n_latents
    position = rows % window
    left, right = position < window - stride, position >= stride
    key = rows * m + cols  # sorted: entries are row-major
    later = (rows - stride) * m + cols  # the key this entry has as the later position
    last = max(codes.nnz - 1, 0)
    j = torch.searchsorted(key, later).clamp(max=last)
    right_matched = right & (key[j] == later) & left[j] if codes.nnz else right
    i = torch.searchsorted(later, key).clamp(max=last)
    left_matched = left & (later[i] == key) & right[i] if codes.nnz else left
    pairs = (codes.n_rows // window) * (window - stride)
    return WindowPairs(left, right, i, left_matched, j, right_matched, pairs)


def window_variation(
    codes: SparseCodes, window: int, stride: int, norms: torch.Tensor
) -> torch.Tensor:
    """Mean over windows and ``t`` of ``sum_i norms[i] |codes[t, i] - codes[t + stride, i]|``
    from the entries: ``|a - b|`` for the entries of the earlier position (``b`` = the later
    position's entry of that latent, or 0) and ``|b|`` for the later position's entries with
    no partner."""
    v, n = codes.values, norms[codes.cols]
    pairs = window_pairs(codes, window, stride)
    zero = torch.zeros_like(v)
    partner = torch.where(pairs.left_matched, v[pairs.partner_of_left], zero)
    earlier = torch.where(pairs.left, (v - partner).abs(), zero)
    unmatched = pairs.right & ~pairs.right_matched
    later = torch.where(unmatched, v.abs(), zero)
    acc = torch.promote_types(v.dtype, torch.float32)
    total = ((earlier + later).to(acc) * n.to(acc)).sum()
    return total / max(pairs.pairs, 1)


# --- choosing the path -----------------------------------------------------------------------


class _DeviceCount:
    """A count computed on the device, read on the host once it is there: on the CPU at
    once; on CUDA through a pinned buffer and an event (no wait)."""

    def __init__(self, count: torch.Tensor, size: int) -> None:
        self.size = size
        if count.device.type == "cuda":
            self.host = torch.empty((), dtype=count.dtype, pin_memory=True)
            self.host.copy_(count, non_blocking=True)
            self.event: Any = torch.cuda.Event()
            self.event.record()
        else:
            self.host, self.event = count, None

    def density(self) -> float | None:
        """The density if it has arrived, else None."""
        if self.event is not None and not self.event.query():
            return None
        return float(self.host) / max(self.size, 1)


class SparseStepSwitch:
    """Chooses each step's path: ``mode`` ``"dense"`` or ``"sparse"`` always (sparse only
    where the SAE allows it), ``"auto"`` sparse while the measured code density is below
    ``threshold``, back to dense above ``threshold * HYSTERESIS``, and dense for steps whose
    dense product (rows x ``d_in`` x ``d_sae``) is below ``min_product``. Sparse steps
    measure density for free (the number of entries); dense steps every ``check_every``
    steps."""

    def __init__(
        self,
        mode: str,
        threshold: float | None = None,
        check_every: int = CHECK_EVERY,
        unsupported: str | None = None,
        owner: str = "this SAE",
        d_in: int = 1,
        min_product: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"sparse_step must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.check_every = mode, check_every
        self._threshold = threshold
        self.device_type = "cpu"  # of the last step observed
        self.unsupported, self.owner = unsupported, owner
        self.d_in = d_in
        self.min_product = MIN_PRODUCT if min_product is None else min_product
        self.product = 0  # the last step's rows x d_in x d_sae
        self._said = False
        self.sparse = False
        self.density: float | None = None
        self.switches = 0
        self._pending: _DeviceCount | None = None

    @property
    def threshold(self) -> float | None:
        """The density below which auto goes sparse (None: it stays dense on this device)."""
        if self._threshold is not None:
            return self._threshold
        return DENSITY_THRESHOLDS.get(self.device_type)

    def choose(self) -> bool:
        """This step's path: True for sparse (Python state only: no read of a device value)."""
        if self._pending is not None:
            density = self._pending.density()
            if density is not None:
                self.density, self._pending = density, None
        if self.unsupported is not None:
            self._say_unsupported()
            sparse = False
        elif self.mode == "dense":
            sparse = False
        elif self.mode == "sparse":
            sparse = True
        elif not self._worth_it():
            sparse = False
        elif self.sparse:
            sparse = self.density <= self.threshold * HYSTERESIS  # type: ignore[operator]
        else:
            sparse = self.density < self.threshold  # type: ignore[operator]
        self.switches += sparse != self.sparse
        self.sparse = sparse
        return sparse

    def _say_unsupported(self) -> None:
        """Once: asked for the sparse step (or, in auto mode, codes sparse enough for it)."""
        wanted = self.mode == "sparse" or (
            self.mode == "auto" and self._worth_it() and self.density < self.threshold  # type: ignore[operator]
        )
        if wanted and not self._said:
            self._said = True
            density = "" if self.density is None else f" (code density {self.density:.2%})"
            warnings.warn(
                f"{self.owner}: every training step is dense{density}: {self.unsupported}",
                UserWarning,
                stacklevel=4,
            )

    def _worth_it(self) -> bool:
        """Auto mode may go sparse: a density measured, a threshold for this device, a step
        big enough."""
        return (
            self.density is not None
            and self.threshold is not None
            and self.product >= self.min_product
        )

    def observe_codes(self, codes: SparseCodes) -> None:
        """A sparse step's density: its number of entries (a host value)."""
        self.density = codes.density
        self.product = codes.n_rows * codes.n_latents * self.d_in
        self.device_type = codes.values.device.type

    def observe_dense(self, feature_acts: torch.Tensor, step: int) -> None:
        """A dense step's codes: counted every ``check_every`` steps (auto mode only)."""
        if self.mode != "auto" or self._pending is not None or self._said:
            return
        if step % self.check_every:
            return
        with torch.no_grad():
            acts = feature_acts.detach()
            count = torch.count_nonzero(acts)
        self._pending = _DeviceCount(count, acts.numel())
        self.product = acts.numel() * self.d_in
        self.device_type = acts.device.type

    def metrics(self, sparse: bool) -> dict[str, float]:
        """Host values for the step's log: the path taken (``sparse``: 1, dense: 0) and the
        last measured code density."""
        out = {"sparse_step": float(sparse)}
        if self.density is not None:
            out["code_density"] = self.density
        return out


@dataclass(kw_only=True)
class SparseStepFields:
    """Config field of an architecture with a sparse training step (:mod:`sae_lens_ext.sparse`).

    Args:
        sparse_step: ``"auto"`` (default): the sparse step while the codes are sparse (measured
            density below ``sae_lens_ext.sparse.DENSITY_THRESHOLDS`` of the device; a device
            without a measured threshold, as CUDA for now, stays dense), the dense step before;
            ``"dense"``: always the dense step; ``"sparse"``: always the sparse step. Both
            compute the same gradients; options the sparse step cannot take make every step
            dense (said once).
    """

    sparse_step: str = "auto"

    def check_sparse_step(self) -> None:
        if self.sparse_step not in MODES:
            raise ValueError(
                f"{type(self).__name__}.sparse_step must be one of {', '.join(MODES)}, "
                f"got {self.sparse_step!r}"
            )


def has_hooks(sae: Any) -> bool:
    """Whether a TransformerLens hook is attached to one of the SAE's hook points (a hook may
    read or change the dense codes: such steps stay dense)."""
    hooks = getattr(sae, "hook_dict", {}).values()
    return any(hook.has_hooks(dir="both", including_permanent=True) for hook in hooks)


@dataclass
class SparseEncoder:
    """What an architecture's sparse step needs from its encoder (see
    :meth:`SparseStepMixin.sparse_encoder`).

    Args:
        hidden: the dense pre-activations, computed as the dense step computes them, under
            ``torch.no_grad()``.
        affine: how they depend on the parameters.
        activation: the activation that makes the codes.
        unscaled: ``hidden`` before ``affine.scale`` (when there is one).
    """

    hidden: torch.Tensor
    affine: AffineMap
    activation: Activation
    unscaled: torch.Tensor | None = None


class SparseStepMixin:
    """The sparse step for a :class:`~sae_lens_ext.training.LossTermTrainingSAE` subclass whose
    config has :class:`SparseStepFields`. Put it before ``LossTermTrainingSAE`` (and after any
    mixin that overrides ``decode`` first) in the bases. The architecture:

    - implements :meth:`sparse_encoder` (its pre-activations and how they depend on its
      parameters) and :meth:`sparse_step_unsupported` (why its options need the dense step);
    - starts ``encode_with_hidden_pre`` with ``if self.sparse_now: return
      self.encode_sparse_step(x)``;
    - reads codes in its own penalties (:func:`codes_of`, :func:`decoder_weighted_l1`, ...).

    The mixin decodes codes with :func:`decode_sparse` (then upstream's output hooks). Loss
    terms with ``sparse_aware=True`` get the codes as a sparse COO ``feature_acts``; when an
    enabled term is not, every term gets a dense, differentiable one. The step's output
    reports the codes as a sparse COO tensor (SAE-Lens's trainer counts firing from it) and
    logs ``sparse_step`` and ``code_density``."""

    cfg: Any
    _sparse_switch: SparseStepSwitch | None = None
    #: True while a sparse step's forward pass runs (``encode_with_hidden_pre`` reads it).
    sparse_now: bool = False
    #: The next step's path, chosen after the previous step (Python state: a compiled step
    #: reads it without a graph break and runs a sparse step eagerly, in one piece).
    next_step_sparse: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.next_step_sparse = self.sparse_switch.choose()

    def sparse_step_unsupported(self) -> str | None:
        """Why this SAE's options need the dense step (None: they do not). Override."""
        return None

    def sparse_encoder(self, x: torch.Tensor) -> SparseEncoder:
        """The encoder of a sparse step on input ``x`` (override)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sparse_encoder")

    @property
    def sparse_switch(self) -> SparseStepSwitch:
        if self._sparse_switch is None:
            self._sparse_switch = SparseStepSwitch(
                self.cfg.sparse_step,
                unsupported=self.sparse_step_unsupported(),
                owner=type(self).__name__,
                d_in=self.cfg.d_in,
            )
        return self._sparse_switch

    def training_forward_pass(self, step_input: Any) -> Any:
        if self.next_step_sparse:
            return self.sparse_training_forward_pass(step_input)
        return super().training_forward_pass(step_input)  # type: ignore[misc]

    @torch.compiler.disable  # entry counts vary from step to step: eager, in one piece
    def sparse_training_forward_pass(self, step_input: Any) -> Any:
        """The base class's forward pass with the sparse encoder and decoder (the dense one
        while a TransformerLens hook is attached)."""
        self.sparse_now = not has_hooks(self)
        try:
            return super().training_forward_pass(step_input)  # type: ignore[misc]
        finally:
            self.sparse_now = False

    @torch.compiler.disable
    def end_step(self, step_input: Any, output: Any) -> None:
        """Report sparse codes as COO, measure density on dense steps, log the path, choose
        the next step's; then the base class's bookkeeping."""
        codes = codes_of(output.feature_acts)
        if codes is not None:
            if not output.feature_acts.is_sparse:
                output.feature_acts = codes.coo()
        else:
            self.sparse_switch.observe_dense(output.feature_acts, step_input.n_training_steps)
        output.metrics.update(self.sparse_switch.metrics(codes is not None))
        self.next_step_sparse = self.sparse_switch.choose()
        super().end_step(step_input, output)  # type: ignore[misc]

    def encode_sparse_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(feature_acts, hidden_pre)`` of a sparse step, for upstream's forward pass."""
        encoder = self.sparse_encoder(x)
        encoding = encode_sparse(
            encoder.hidden, encoder.affine, encoder.activation, encoder.unscaled
        )
        codes = encoding.codes
        self.sparse_switch.observe_codes(codes)
        if self._terms_read_dense():
            feature_acts = attach_codes(codes.dense(), codes)
        else:
            feature_acts = codes.coo()
        return feature_acts, encoding.hidden_pre

    def _terms_read_dense(self) -> bool:
        terms = getattr(self, "_terms", [])
        return any(not getattr(term, "sparse_aware", False) for _, term in terms)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        codes = codes_of(feature_acts)
        if codes is None:
            return super().decode(feature_acts)  # type: ignore[misc]
        return self.finish_decode(decode_sparse(codes, self.W_dec, self.b_dec))  # type: ignore[attr-defined,arg-type]

    def finish_decode(self, recons: torch.Tensor) -> torch.Tensor:
        """Upstream's decode after the product: output hooks, normalisation, reshaping."""
        sae: Any = self
        out = sae.run_time_activation_norm_fn_out(sae.hook_sae_recons(recons))
        return sae.reshape_fn_out(out, sae.d_head)
