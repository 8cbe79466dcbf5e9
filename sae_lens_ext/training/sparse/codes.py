"""A batch's codes as entries (:class:`SparseCodes`): how an activation selects them, how
their values carry the encoder's gradient (:class:`AffineMap`, :func:`encode_sparse`), the
decoder from them (:func:`decode_sparse`) and the penalties read from them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from sae_lens_ext.training.sparse.kernels import (
    _AffineAt,
    _BagDecode,
    _DenseHidden,
    _Densify,
    _Gram,
    _GramPairs,
    _JumpReLUAt,
    _shared_latent_pairs,
)

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
    whole batch. Where several entries tie at the boundary of that set, the first in
    row-major order are kept on the CPU (``torch.topk``'s choice elsewhere, and under
    ``torch.compile``). Called on a tensor it is the activation's dense output, so an SAE
    whose ``get_activation_fn`` returns it picks the same entries on its dense and sparse
    steps."""

    k: float

    def select(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_latents = hidden.shape[-1]
        index = self.flat_indices(hidden).sort().values
        return index // n_latents, index % n_latents

    def flat_indices(self, hidden: torch.Tensor) -> torch.Tensor:
        """The chosen entries' indices into ``hidden.flatten()`` (in no particular order)."""
        count = int(self.k * hidden.shape[:-1].numel())
        index = None
        if hidden.device.type == "cpu" and not torch.compiler.is_compiling():
            index = _host_batch_topk(hidden.detach(), count)
        if index is None:
            index = torch.topk(hidden.detach().relu().flatten(), count, dim=-1).indices
        return index

    def apply(self, pre: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """The dense codes: ``hidden``'s ReLU at the chosen entries, 0 elsewhere (upstream's
        ``BatchTopK`` module's output, its gradient included)."""
        flat = hidden.relu().flatten()
        index = self.flat_indices(hidden)
        return torch.zeros_like(flat).scatter(-1, index, flat[index]).reshape(hidden.shape)


def _host_batch_topk(hidden: torch.Tensor, count: int) -> torch.Tensor | None:
    """On the CPU (where reading a value costs nothing): the flat indices of the ``count``
    largest positive entries of ``hidden``, found among the entries above a threshold taken
    from a sample, instead of a ``topk`` over every entry; entries tied at the boundary are
    taken in row-major order. None where fewer than ``count`` entries are positive (or the
    sample misses): then ``torch.topk`` decides, as the dense step's does."""
    flat = hidden.reshape(-1)
    stride = max(1, flat.numel() // (8 * max(count, 1))) | 1  # odd: every latent sampled
    sample = flat[::stride]
    expect = 4 * count * sample.numel() // flat.numel() + 1  # ~4x the share we need
    if count == 0 or expect >= sample.numel():
        return None
    bound = torch.topk(sample, expect, sorted=False).values.min()
    if not bound > 0:
        return None
    candidates, values = _entries_above(flat, bound)
    if candidates.numel() <= count:
        return None
    top = torch.topk(values, count + 1)  # sorted: the boundary is the last two
    boundary = top.values[count - 1]
    if top.values[count] < boundary:
        return candidates[top.indices[:count]]
    above = candidates[values > boundary]  # a tie: the first tied entries by position
    tied = candidates[values == boundary]
    return torch.cat([above, tied[: count - above.numel()]])


def _entries_above(flat: torch.Tensor, bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices and values of ``flat``'s entries above ``bound``, a cache-sized chunk at
    a time (no mask of ``flat``'s size: a fresh tensor that large costs page faults)."""
    chunk = 1 << 18
    indices, values = [], []
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk]
        index = (part > bound).nonzero().flatten()
        indices.append(index + start)
        values.append(part[index])
    return torch.cat(indices), torch.cat(values)


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


def accumulate(
    total: torch.Tensor, term: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``total + term`` (type promotion included). Where no gradient is recorded it is written
    into ``total`` (a temporary of the caller's: a product's output), or into one converted
    copy of it: the same values, one batch x ``d_sae`` tensor fewer to allocate and write.
    That copy goes into ``out`` (a tensor of the caller's it no longer needs) where it fits:
    on the CPU a fresh tensor of that size costs a pass of page faults."""
    if torch.is_grad_enabled() and (total.requires_grad or term.requires_grad):
        return total + term
    dtype = torch.result_type(total, term)
    if total.dtype == dtype:
        converted = total
    elif out is not None and out.dtype == dtype and out.shape == total.shape:
        converted = out.copy_(total)
    else:
        converted = total.to(dtype)
    return converted.add_(term)


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


def gram(a: SparseCodes, b: SparseCodes, first: int | None = None) -> torch.Tensor:
    """``dense(a) @ dense(b).T`` (``(a.n_rows, b.n_rows)``) over latents ``[0, first)`` (all
    by default), differentiable in both sides' values; ``a`` and ``b`` on the same latents.

    On the CPU, where counting costs no sync, it is summed over the pairs of entries on a
    latent when there are few enough; otherwise by sampled products."""
    if a.n_latents != b.n_latents:
        raise ValueError(f"gram: {a.n_latents} against {b.n_latents} latents")
    width = a.n_latents if first is None else first
    if a.values.device.type == "cpu":
        pairs = _pairs_within(a, b, width)
        if pairs is not None:
            shape = (a.n_rows, b.n_rows)
            return _GramPairs.apply(a.values, b.values, a.rows, b.rows, *pairs, shape)
    if width < a.n_latents:
        a, b = a.first_latents(width), b.first_latents(width)
    shape3 = (a.n_rows, b.n_rows, a.n_latents)
    return _Gram.apply(a.values, b.values, a.cols, a.offsets, b.rows, b.cols, b.offsets, shape3)


def _pairs_within(
    a: SparseCodes, b: SparseCodes, width: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The pairs of ``a``'s and ``b``'s entries on a latent below ``width`` (indices into
    each side's entries), or None where they cost more than the sampled products (a pair
    costs about 16 of their multiply-adds)."""
    in_a = (a.cols < width).nonzero().flatten()
    in_b = (b.cols < width).nonzero().flatten()
    found = _shared_latent_pairs(a.cols[in_a], b.cols[in_b], most=in_a.numel() * b.n_rows // 16)
    if found is None:
        return None
    return in_a[found[0]], in_b[found[1]]


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
