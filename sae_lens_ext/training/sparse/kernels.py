"""The autograd functions of the sparse step (:mod:`sae_lens_ext.training.sparse`): each one's
backward touches only the entries it is given."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from typing_extensions import override


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

    @override
    @staticmethod
    def forward(ctx: Any, values, rows, cols, n_rows: int, n_latents: int):
        ctx.save_for_backward(rows, cols)
        out = values.new_zeros(n_rows, n_latents)
        return out.index_put_((rows, cols), values)

    @override
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        rows, cols = ctx.saved_tensors
        return grad[rows, cols], None, None, None, None


class _AffineAt(torch.autograd.Function):
    """Values of an affine map's output ``h = sum_t c_t (inputs_t @ W_t) + bias`` at given
    entries (``values``: read from ``h`` computed beforehand). The backward takes the gradient at the
    entries only (a sparse ``G``): ``dW_t = c_t inputs_t^T G``, ``dbias = colsum(G)``,
    ``dinputs_t = c_t G W_t^T`` and, for a ``shift`` subtracted from every (detached) input,
    ``dshift = -sum_t c_t W_t colsum(G)``."""

    @override
    @staticmethod
    def forward(ctx: Any, spec, rows, cols, offsets, values, shift, bias, *tensors):
        n_terms = len(spec.coefficients)
        ctx.spec, ctx.n_terms = spec, n_terms
        ctx.save_for_backward(rows, cols, offsets, shift, bias, *tensors)
        return values.clone()

    @override
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
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

    @override
    @staticmethod
    def forward(ctx: Any, spec, hidden, unscaled, scale, shift, bias, *tensors):
        ctx.spec, ctx.n_terms = spec, len(spec.coefficients)
        ctx.save_for_backward(unscaled, scale, shift, bias, *tensors)
        return hidden  # returned as a view: no copy

    @override
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
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

    @override
    @staticmethod
    def forward(ctx: Any, values, W, cols, offsets, n_bags: int):
        dtype = _compute_dtype(values, W)
        v, Wc = values.to(dtype), W.to(dtype)
        ctx.save_for_backward(v, Wc, cols, offsets)
        ctx.n_bags, ctx.dtypes = n_bags, (values.dtype, W.dtype)
        with torch.autocast(W.device.type, enabled=False):
            return F.embedding_bag(
                cols, Wc, offsets, mode="sum", per_sample_weights=v, include_last_offset=True
            )

    @override
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
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

    @override
    @staticmethod
    def forward(ctx: Any, va, vb, a_cols, a_offsets, b_rows, b_cols, b_offsets, shape):
        n_a, n_b, width = shape
        dtype = _compute_dtype(va, vb)
        va, vb = va.to(dtype), vb.to(dtype)
        B_t = va.new_zeros(width, n_b).index_put_((b_cols, b_rows), vb)  # B^T, contiguous
        ctx.save_for_backward(va, vb, a_cols, a_offsets, b_cols, b_offsets, B_t)
        ctx.shape = shape
        with torch.autocast(va.device.type, enabled=False):
            return _csr(a_offsets, a_cols, va, (n_a, width)) @ B_t

    @override
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
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


def _shared_latent_pairs(
    a_cols: torch.Tensor, b_cols: torch.Tensor, most: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(pair_a, pair_b)``: every pair of an entry of ``a`` and an entry of ``b`` on the same
    latent (indices into each side's entries); None where there are more than ``most``."""
    order = torch.argsort(b_cols, stable=True)
    sorted_cols = b_cols[order]
    start = torch.searchsorted(sorted_cols, a_cols)
    counts = torch.searchsorted(sorted_cols, a_cols, right=True) - start
    total = int(counts.sum())  # a host read: callers use this on the CPU
    if total > most:
        return None
    pair_a = torch.repeat_interleave(counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    within = torch.arange(total, device=a_cols.device) - first[pair_a]
    return pair_a, order[start[pair_a] + within]


class _GramPairs(torch.autograd.Function):
    """:class:`_Gram` from the pairs of entries on the same latent: each pair adds one
    product to one cell, and each side's gradient gathers the cells of its pairs."""

    @override
    @staticmethod
    def forward(ctx: Any, va, vb, a_rows, b_rows, pair_a, pair_b, shape):
        n_a, n_b = shape
        dtype = _compute_dtype(va, vb)
        va, vb = va.to(dtype), vb.to(dtype)
        cells = a_rows[pair_a] * n_b + b_rows[pair_b]
        ctx.save_for_backward(va, vb, pair_a, pair_b, cells)
        out = va.new_zeros(n_a * n_b).index_add_(0, cells, va[pair_a] * vb[pair_b])
        return out.view(n_a, n_b)

    @override
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        va, vb, pair_a, pair_b, cells = ctx.saved_tensors
        g = grad.reshape(-1)[cells].to(va.dtype)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.zeros_like(va).index_add_(0, pair_a, g * vb[pair_b])
        if ctx.needs_input_grad[1]:
            grad_b = torch.zeros_like(vb).index_add_(0, pair_b, g * va[pair_a])
        return grad_a, grad_b, None, None, None, None, None


class _JumpReLUAt(torch.autograd.Function):
    """Upstream's ``JumpReLU`` on entries: threshold of latent ``cols[j]``; its gradient sums
    the straight-through estimate over the entries of each latent."""

    @override
    @staticmethod
    def forward(ctx: Any, pre, threshold, cols, bandwidth: float, ste_to_input: bool):
        t = threshold.to(pre.dtype)[cols]
        ctx.save_for_backward(pre, t, cols)
        ctx.bandwidth, ctx.ste, ctx.threshold_shape = bandwidth, ste_to_input, threshold.shape
        ctx.threshold_dtype = threshold.dtype
        return pre * (pre > t)

    @override
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
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
