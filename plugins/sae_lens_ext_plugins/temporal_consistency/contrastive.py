"""The window InfoNCE of ``temporal_contrastive``, computed from the non-zero codes.

For each offset ``t`` the term needs the cosine similarities between the codes at
position ``t`` of every window (anchors) and at position ``t - stride`` of every window
(positives): an ``n_w x n_w`` matrix (``n_w`` windows). As a dense product that is one
``n_w x k x n_w`` GEMM per offset forward and two backward: at a batch of 4096 rows and
``k = d_sae = 16384`` latents, as much work as the SAE's own encoder and decoder together.
But only pairs of codes active in the *same* latent contribute, and SAE codes are sparse
(tens of latents out of thousands), so :class:`SparseWindowInfoNCE` sums the products of
matching non-zero entries instead, latent by latent:

- a latent active in ``c_a`` anchors and ``c_p`` positives adds ``c_a x c_p`` products;
  rare latents are summed pair by pair (a join on the latent index);
- frequent latents (``c_a * c_p > n_w^2 / PAIR_COST_RATIO``, where a pair costs more than
  the latent's share of a GEMM) go through one small dense product over those latents only.

The cosine normalisation is applied to the entries (each row's norm from its own non-zero
entries), and the loss, the softmax and the cross-entropy are those of
:func:`dense_window_infonce`, the plain implementation (used on GPUs, for dense codes, and as
the reference in the tests). Same value up to float summation order.

Gradient: exact at every non-zero code, and 0 at the zero codes, where the dense gradient is
not 0 but the ReLU that produced the codes multiplies it by 0: every parameter gets exactly
the dense gradient. The sparse path is therefore only taken for codes that come straight
from a ReLU (their autograd node is ``ReluBackward0``), or that need no gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from typing_extensions import override

EPS = 1e-8  # as F.normalize's default: a row of norm below it is divided by EPS
#: A pair of matching entries costs about this many multiply-adds of a dense GEMM (measured on
#: CPU, 1 thread, d_sae 16384: ~80 ns per pair against ~0.035 ns per fp32 multiply-add).
PAIR_COST_RATIO = 2048
#: Codes with more non-zero entries than this share take the dense path.
MAX_DENSITY = 1 / 16
DENSITY_SAMPLE_ROWS = 256


def dense_window_infonce(
    feature_acts: torch.Tensor, window: int, k: int, temperature: float, stride: int
) -> torch.Tensor:
    """The window InfoNCE as dense products (see
    :func:`~sae_lens_ext_plugins.temporal_consistency.losses.contrastive_penalty`)."""
    h = feature_acts[:, :k].reshape(-1, window, k).float()
    h = F.normalize(h, dim=-1, eps=EPS)
    anchors = h[:, stride:].transpose(0, 1)  # (window-s, n_windows, k)
    positives = h[:, :-stride].transpose(0, 1)
    logits = anchors @ positives.transpose(1, 2) / temperature  # (window-s, n_w, n_w)
    n_windows = logits.shape[-1]
    target = torch.arange(n_windows, device=logits.device).repeat(window - stride)
    return F.cross_entropy(logits.reshape(-1, n_windows), target)


def sparse_path_applies(feature_acts: torch.Tensor, k: int) -> bool:
    """Whether :class:`SparseWindowInfoNCE` computes the dense loss and gradient here: CPU
    tensors (on a GPU the dense products are fast, and the sparse path would need a
    host-device sync), codes from a ReLU (or needing no gradient), not more than
    ``MAX_DENSITY`` of them non-zero."""
    if feature_acts.device.type != "cpu" or feature_acts.dim() != 2:
        return False
    if torch.compiler.is_compiling():
        return False
    grad_fn = feature_acts.grad_fn
    if feature_acts.requires_grad and (grad_fn is None or grad_fn.name() != "ReluBackward0"):
        return False
    # the density of a sample of rows (a count over all rows would cost a pass of its own)
    sample = feature_acts[:: max(1, feature_acts.shape[0] // DENSITY_SAMPLE_ROWS), :k]
    return int(torch.count_nonzero(sample)) <= MAX_DENSITY * sample.numel()


class _Codes:
    """The non-zero codes among the first ``k`` latents: row, latent, cosine-normalised value,
    and each row's window and position."""

    def __init__(self, acts: torch.Tensor, k: int, window: int) -> None:
        d = acts.shape[1]
        flat = acts.reshape(-1)
        index = flat.nonzero().squeeze(1)
        rows, cols = index.div(d, rounding_mode="floor"), index.remainder(d)
        if k < d:
            keep = cols < k
            index, rows, cols = index[keep], rows[keep], cols[keep]
        vals = flat[index].float()
        self.n_rows, self.k, self.rows, self.cols = acts.shape[0], k, rows, cols
        squares = torch.zeros(self.n_rows, dtype=torch.float32).index_add_(0, rows, vals * vals)
        self.norm = squares.sqrt()
        self.inv = 1.0 / self.norm.clamp_min(EPS)
        self.hat = vals * self.inv[rows]
        self.win = rows.div(window, rounding_mode="floor")
        pos = rows.remainder(window)
        self.by_position = torch.argsort(pos, stable=True)
        counts = torch.bincount(pos, minlength=window).tolist()
        self.starts = [sum(counts[:i]) for i in range(window + 1)]

    def at(self, position: int) -> torch.Tensor:
        """Indices of the entries at ``position`` of their window (in row order)."""
        return self.by_position[self.starts[position] : self.starts[position + 1]]

    def input_gradient(self, dhat: torch.Tensor, shape: torch.Size, dtype: torch.dtype):
        """The gradient in the codes from the one in their normalised values (non-zero
        entries only; see the module docstring)."""
        dot = torch.zeros(self.n_rows, dtype=torch.float32).index_add_(
            0, self.rows, self.hat * dhat
        )
        dot = dot * (self.norm > EPS)  # below EPS, F.normalize divides by the constant EPS
        dvals = self.inv[self.rows] * (dhat - self.hat * dot[self.rows])
        grad = torch.zeros(shape, dtype=dtype)
        grad.view(-1, shape[-1])[self.rows, self.cols] = dvals.to(dtype)
        return grad


class _Offset:
    """Anchors at one position, positives at an earlier one: which latents are summed pair
    by pair and which through a dense product (see the module docstring)."""

    def __init__(self, codes: _Codes, anchor_pos: int, positive_pos: int, n_w: int) -> None:
        self.codes, self.n_w = codes, n_w
        self.a, self.p = codes.at(anchor_pos), codes.at(positive_pos)
        cols_a, cols_p = codes.cols[self.a], codes.cols[self.p]
        count_a = torch.bincount(cols_a, minlength=codes.k)
        count_p = torch.bincount(cols_p, minlength=codes.k)
        dense = count_a * count_p > n_w * n_w // PAIR_COST_RATIO
        self.dense_latents = dense.nonzero().squeeze(1)
        slot = torch.full((codes.k,), -1, dtype=torch.long)
        slot[self.dense_latents] = torch.arange(self.dense_latents.numel())
        in_a, in_p = dense[cols_a], dense[cols_p]
        self.dense_a, self.dense_p = self.a[in_a], self.p[in_p]
        self.slot_a, self.slot_p = slot[cols_a[in_a]], slot[cols_p[in_p]]
        self.pair_a, self.pair_p = _join(self.a[~in_a], self.p[~in_p], codes.cols, codes.k)

    def matrix(self, entries: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``(n_w, n_dense)`` values of ``entries`` in the dense latents."""
        out = torch.zeros(self.n_w, self.dense_latents.numel(), dtype=torch.float32)
        out[self.codes.win[entries], slots] = self.codes.hat[entries]
        return out

    def cosines(self) -> torch.Tensor:
        """``(n_w, n_w)`` cosine similarities, anchor window x positive window."""
        c = self.codes
        cos = self.matrix(self.dense_a, self.slot_a) @ self.matrix(self.dense_p, self.slot_p).T
        flat_index = c.win[self.pair_a] * self.n_w + c.win[self.pair_p]
        cos.view(-1).index_add_(0, flat_index, c.hat[self.pair_a] * c.hat[self.pair_p])
        return cos

    def backward(self, grad_cos: torch.Tensor, dhat: torch.Tensor) -> None:
        """Add the gradient in the entries' normalised values to ``dhat``."""
        c = self.codes
        anchors = self.matrix(self.dense_a, self.slot_a)
        positives = self.matrix(self.dense_p, self.slot_p)
        d_anchors, d_positives = grad_cos @ positives, grad_cos.T @ anchors
        dhat.index_add_(0, self.dense_a, d_anchors[c.win[self.dense_a], self.slot_a])
        dhat.index_add_(0, self.dense_p, d_positives[c.win[self.dense_p], self.slot_p])
        g = grad_cos.reshape(-1)[c.win[self.pair_a] * self.n_w + c.win[self.pair_p]]
        dhat.index_add_(0, self.pair_a, g * c.hat[self.pair_p])
        dhat.index_add_(0, self.pair_p, g * c.hat[self.pair_a])


def _join(a: torch.Tensor, p: torch.Tensor, cols: torch.Tensor, k: int):
    """Every pair ``(a[i], p[j])`` of entries in the same latent, as two index tensors."""
    cols_a, cols_p = cols[a], cols[p]
    order = torch.argsort(cols_p, stable=True)
    count_p = torch.bincount(cols_p, minlength=k)
    n = count_p[cols_a]  # partners of each anchor entry
    first = (count_p.cumsum(0) - count_p)[cols_a]
    i = torch.repeat_interleave(torch.arange(a.numel()), n)
    starts = torch.repeat_interleave(n.cumsum(0) - n, n)
    j = order[first[i] + torch.arange(i.numel()) - starts]
    return a[i], p[j]


class SparseWindowInfoNCE(torch.autograd.Function):
    """The window InfoNCE from the non-zero codes (see the module docstring)."""

    @override
    @staticmethod
    def forward(
        ctx: Any, acts: torch.Tensor, k: int, window: int, stride: int, temperature: float
    ) -> torch.Tensor:
        with torch.autocast(acts.device.type, enabled=False):
            codes = _Codes(acts, k, window)
            n_w = acts.shape[0] // window
            offsets = [_Offset(codes, t, t - stride, n_w) for t in range(stride, window)]
            total = torch.zeros((), dtype=torch.float64)
            probabilities = []
            for offset in offsets:
                logits = offset.cosines() / temperature
                total += (torch.logsumexp(logits, 1) - logits.diagonal()).sum()
                probabilities.append(torch.softmax(logits, 1))
        ctx.codes, ctx.offsets, ctx.probabilities = codes, offsets, probabilities
        ctx.shape, ctx.dtype, ctx.temperature = acts.shape, acts.dtype, temperature
        ctx.count = n_w * len(offsets)
        return (total / ctx.count).to(torch.float32)

    @override
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        codes = ctx.codes
        dhat = torch.zeros_like(codes.hat)
        scale = grad.float() / (ctx.count * ctx.temperature)
        for offset, probabilities in zip(ctx.offsets, ctx.probabilities, strict=True):
            grad_logits = probabilities * scale  # (softmax - one-hot) * scale
            grad_logits.diagonal().sub_(scale)
            offset.backward(grad_logits, dhat)
        return codes.input_gradient(dhat, ctx.shape, ctx.dtype), None, None, None, None
