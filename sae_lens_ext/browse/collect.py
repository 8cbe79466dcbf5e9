"""Streaming statistics of an SAE's latents over whole contexts, in bounded memory.

:class:`LatentCollector` sees one batch of contexts at a time (the SAE's activations on
``(B, T)`` tokens, every context encoded whole) and keeps, on the SAE's device:

- for every latent: how many tokens it fired on, and its highest activation;
- for the browsed latents: a running top-k of contexts by the latent's highest activation
  in them (each kept as a window of ``window`` positions around that maximum, values and
  token ids: :class:`TopContexts`, which plugins read as ``BrowserData.contexts``), and a
  histogram of its positive activations in log-spaced bins.

Nothing grows with the number of tokens read: :meth:`LatentCollector.state_bytes` is the
whole state, and :func:`memory_bound` adds what one batch needs on top of it (see
docs/browse.md). No value is read back to the host inside :meth:`~LatentCollector.update`
except through ``nonzero`` (the positive activations for the histogram).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: Top contexts kept per browsed latent.
DEFAULT_CONTEXTS = 20
#: Positions kept around each context's highest activation, and how many of them before it.
DEFAULT_WINDOW = 48
DEFAULT_BEFORE = 36
#: Histogram bins: ``HIST_BINS`` equal bins of log10(activation) over ``HIST_LOG10``
#: (values outside fall into the end bins).
HIST_BINS = 256
HIST_LOG10 = (-4.0, 4.0)
#: Elements of one batch of latent activations ``(B, T, d_sae)`` (float32: 128 MiB).
BATCH_ELEMENTS = 1 << 25


@dataclass
class TopContexts:
    """The top contexts of the browsed latents (row ``i``: ``BrowserData.latents[i]``),
    best first. Slots no context filled have ``max_values`` ``-inf``.

    Attributes:
        max_values: ``(n, k)`` highest activation of the latent in each context.
        acts: ``(n, k, window)`` its activation at each position of the window.
        tokens: ``(n, k, window)`` token ids of the window.
        context: ``(n, k)`` index of the context in the stream read.
        start: ``(n, k)`` position of the window's first token in its context.
    """

    max_values: torch.Tensor
    acts: torch.Tensor
    tokens: torch.Tensor
    context: torch.Tensor
    start: torch.Tensor


def batch_contexts(context_size: int, d_sae: int, limit: int = 32) -> int:
    """Contexts encoded at once: at most ``limit``, and ``BATCH_ELEMENTS`` latent values."""
    return max(1, min(limit, BATCH_ELEMENTS // max(1, context_size * d_sae)))


@torch.no_grad()
def encode_contexts(sae: Any, contexts: torch.Tensor) -> torch.Tensor:
    """``sae.encode`` of ``(B, T, d_in)`` whole contexts -> ``(B, T, d_sae)``: window and
    context architectures see every position of a context, in order, never a lone token."""
    if contexts.dim() != 3:
        raise ValueError(f"contexts must be (B, T, d_in), got shape {tuple(contexts.shape)}")
    was_training = sae.training
    sae.eval()
    try:
        latents = sae.encode(contexts.to(sae.device, sae.dtype))
    finally:
        sae.train(was_training)
    if latents.shape[:2] != contexts.shape[:2]:
        raise ValueError(
            f"{type(sae).__name__}.encode returned shape {tuple(latents.shape)} for contexts "
            f"of shape {tuple(contexts.shape)}; the browser needs (B, T, d_sae)"
        )
    return latents


def _as_span(latents: Sequence[int]) -> slice | None:
    """``slice(a, b)`` when ``latents`` is the range ``a..b-1`` (a view, no copy)."""
    if latents and list(latents) == list(range(latents[0], latents[0] + len(latents))):
        return slice(latents[0], latents[0] + len(latents))
    return None


class LatentCollector:
    """Running statistics of ``d_sae`` latents; the browsed ones are ``latents``.

    Args:
        d_sae: latents of the SAE.
        latents: indices of the browsed latents.
        context_size: positions per context (every batch has this many).
        contexts: top contexts kept per browsed latent.
        window: positions kept around a context's maximum (at most ``context_size``).
        before: of which before the maximum (fewer near the context's start).
        device: where the state lives (the SAE's device).
    """

    def __init__(
        self,
        d_sae: int,
        latents: Sequence[int],
        *,
        context_size: int,
        contexts: int = DEFAULT_CONTEXTS,
        window: int = DEFAULT_WINDOW,
        before: int = DEFAULT_BEFORE,
        device: torch.device | str = "cpu",
    ) -> None:
        if not latents:
            raise ValueError("latents: give at least one latent to browse")
        if min(latents) < 0 or max(latents) >= d_sae:
            raise ValueError(f"latents must be in [0, {d_sae}), got {min(latents)}..{max(latents)}")
        self.d_sae, self.context_size = d_sae, context_size
        self.k, self.window = contexts, min(window, context_size)
        self.before = min(before, self.window - 1)
        self.device = torch.device(device)
        self._span = _as_span(latents)
        self.latents = torch.tensor(list(latents), dtype=torch.long, device=self.device)
        n, dev = len(latents), self.device
        self.counts = torch.zeros(d_sae, dtype=torch.int64, device=dev)
        self.max_values = torch.full((d_sae,), float("-inf"), device=dev)
        self.n_tokens = torch.zeros((), dtype=torch.int64, device=dev)
        self.n_contexts = 0
        self.top = TopContexts(
            max_values=torch.full((n, self.k), float("-inf"), device=dev),
            acts=torch.zeros((n, self.k, self.window), device=dev),
            tokens=torch.zeros((n, self.k, self.window), dtype=torch.int32, device=dev),
            context=torch.full((n, self.k), -1, dtype=torch.int64, device=dev),
            start=torch.zeros((n, self.k), dtype=torch.int64, device=dev),
        )
        self.hist = torch.zeros((n, HIST_BINS), dtype=torch.int64, device=dev)

    def state_bytes(self) -> int:
        """Bytes of the whole state (independent of the tokens read)."""
        tensors = [self.counts, self.max_values, self.n_tokens, self.latents, self.hist]
        tensors += [
            getattr(self.top, f) for f in ("max_values", "acts", "tokens", "context", "start")
        ]
        return sum(t.numel() * t.element_size() for t in tensors)

    @torch.no_grad()
    def update(
        self, latent_acts: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor | None = None
    ) -> None:
        """Add one batch: ``latent_acts`` ``(B, T, d_sae)`` of contexts ``tokens`` ``(B, T)``;
        positions where ``keep`` is False (special tokens) are left out of every statistic."""
        B, T, d_sae = latent_acts.shape
        if (T, d_sae) != (self.context_size, self.d_sae) or tokens.shape != (B, T):
            raise ValueError(
                f"update: expected ({B}, {self.context_size}, {self.d_sae}) activations and "
                f"({B}, {self.context_size}) tokens, got {tuple(latent_acts.shape)} and "
                f"{tuple(tokens.shape)}"
            )
        acts = latent_acts.to(self.device, torch.float32)
        tokens = tokens.to(self.device)
        if keep is not None:
            keep = keep.to(self.device)
            acts = acts * keep.unsqueeze(-1)
            self.n_tokens += keep.sum()
        else:
            self.n_tokens += B * T
        self.counts += (acts != 0).sum((0, 1))
        torch.maximum(self.max_values, acts.amax((0, 1)), out=self.max_values)
        chosen = acts[..., self._span] if self._span else acts.index_select(-1, self.latents)
        self._add_histogram(chosen)
        self._add_contexts(chosen, tokens)
        self.n_contexts += B

    def _add_histogram(self, chosen: torch.Tensor) -> None:
        b, t, j = torch.nonzero(chosen > 0, as_tuple=True)
        lo, hi = HIST_LOG10
        scaled = (chosen[b, t, j].log10() - lo) * (HIST_BINS / (hi - lo))
        bins = scaled.floor().clamp(0, HIST_BINS - 1).long()
        self.hist.view(-1).index_add_(0, j * HIST_BINS + bins, torch.ones_like(bins))

    def _add_contexts(self, chosen: torch.Tensor, tokens: torch.Tensor) -> None:
        """Merge the batch's contexts into the running top-k of each browsed latent."""
        B, T, n = chosen.shape
        best, where = chosen.max(dim=1)  # (B, n): each context's maximum and its position
        best = torch.where(best > 0, best, float("-inf"))  # a context where it never fired
        start = (where - self.before).clamp(0, T - self.window)  # (B, n)
        index = start.unsqueeze(1) + torch.arange(self.window, device=self.device).view(1, -1, 1)
        windows = chosen.gather(1, index).permute(2, 0, 1)  # (n, B, window)
        window_tokens = tokens.to(torch.int32).unsqueeze(-1).expand(B, T, n)
        window_tokens = window_tokens.gather(1, index).permute(2, 0, 1)
        ids = torch.arange(self.n_contexts, self.n_contexts + B, device=self.device)

        top = self.top
        values, order = torch.cat([top.max_values, best.T], 1).topk(self.k, dim=1)

        def keep(old: torch.Tensor, new: torch.Tensor) -> None:
            """The kept rows of ``old`` and ``new``, written into ``old`` (no new state)."""
            both = torch.cat([old, new], 1)
            index = order.view(*order.shape, *([1] * (both.dim() - 2))).expand(
                -1, -1, *both.shape[2:]
            )
            torch.gather(both, 1, index, out=old)

        keep(top.acts, windows)
        keep(top.tokens, window_tokens)
        keep(top.context, ids.unsqueeze(0).expand(n, B))
        keep(top.start, start.T)
        top.max_values.copy_(values)

    def histogram_edges(self) -> torch.Tensor:
        """``(HIST_BINS + 1,)`` bin edges of :attr:`hist` (activation values)."""
        lo, hi = HIST_LOG10
        return torch.logspace(lo, hi, HIST_BINS + 1, dtype=torch.float64)


def memory_bound(
    d_sae: int,
    n_latents: int,
    context_size: int,
    d_in: int,
    *,
    contexts: int = DEFAULT_CONTEXTS,
    window: int = DEFAULT_WINDOW,
) -> int:
    """Bytes the browser holds on the SAE's device while reading, whatever the number of
    tokens: the collector's state plus one batch (its input activations, its latent
    activations and the copies the update makes of them)."""
    window = min(window, context_size)
    state = d_sae * (8 + 4) + n_latents * (contexts * (window * 8 + 8 * 3) + HIST_BINS * 8 + 8)
    batch = batch_contexts(context_size, d_sae)
    per_batch = batch * context_size * (d_in + 3 * d_sae + 2 * n_latents) * 4
    merge = n_latents * (contexts + batch) * window * 8 * 2
    return state + per_batch + merge


def linear_histogram(
    counts: torch.Tensor, edges: torch.Tensor, top: float, bins: int = 40
) -> tuple[list[float], list[float]]:
    """Counts in fine log-spaced bins (``edges``) regrouped into ``bins`` equal bins over
    ``[0, top]``: each fine bin goes to the bin holding its geometric centre (a fine bin spans
    7.5 % of its values: the error). Returns ``(heights, edges)``."""
    top = float(top) if top > 0 else 1.0
    centres = (edges[:-1] * edges[1:]).sqrt()
    target = (centres / top * bins).floor().clamp(0, bins - 1).long()
    heights = torch.zeros(bins, dtype=torch.float64).index_add_(0, target, counts.double().cpu())
    return heights.tolist(), [top * i / bins for i in range(bins + 1)]
