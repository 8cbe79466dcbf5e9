"""What the latent browser knows about an SAE, and what plugins add to it.

:class:`BrowserData` is handed to the ``browser_panels`` hook; a plugin returns
:class:`Panel` objects (HTML or SVG fragments, e.g. drawn with :mod:`sae_lens_ext.browse.svg`).
Importing this module is cheap (no torch); the tensors it holds are torch tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sae_lens_ext.browse.collect import TopContexts
    from sae_lens_ext.metrics import EvalData


@dataclass(frozen=True)
class Panel:
    """A block a plugin adds to the browser.

    Attributes:
        title: the panel's heading (plain text; escaped by the browser).
        html: its body: an HTML or SVG fragment, inserted as given (escape any text you
            put in it: ``html.escape``); no scripts, no external resources.
        latent: the latent whose card shows it; ``None``: shown beside the index.
    """

    title: str
    html: str
    latent: int | None = None


@dataclass(frozen=True)
class Context:
    """One top-activating context of a latent, as the browser shows it: a window of
    consecutive positions around the context's highest activation."""

    tokens: list[str]
    values: list[float]
    max_value: float
    max_index: int  # position of the highest activation within ``tokens``
    context: int  # index of the context in the stream of contexts read
    start: int  # position of ``tokens[0]`` within that context


@dataclass
class BrowserData:
    """Everything the browser shows, for plugins (``browser_panels``).

    Attributes:
        latents: the browsed latents, in the order of the index.
        d_sae: the SAE's number of latents.
        context_size: positions per context.
        n_tokens: tokens counted: those read, less the special tokens left out.
        n_contexts: contexts read (``n_contexts * context_size`` tokens).
        frequencies: ``(d_sae,)`` float64 share of tokens on which each latent is non-zero.
        ranks: ``(d_sae,)`` rank of each latent by frequency (1: the most frequent).
        max_values: ``(d_sae,)`` highest activation of each latent.
        contexts: top contexts of the browsed latents (see
            :class:`~sae_lens_ext.browse.collect.TopContexts`).
        hist_counts, hist_edges: ``(n, bins)`` counts of positive activations of the browsed
            latents, in ``bins`` log-spaced bins of edges ``hist_edges`` (``bins + 1``).
        sample: the input activations of the first contexts read, as sequences
            ``(n_seq, context, d_in)`` (an :class:`~sae_lens_ext.metrics.EvalData`).
        token_text: token id -> its text.
        model_name, hook_name: what the activations are.
        special_ids: token ids left out of every statistic (BOS, EOS, padding).
    """

    sae: Any
    latents: list[int]
    d_sae: int
    context_size: int
    n_tokens: int
    n_contexts: int
    frequencies: torch.Tensor
    ranks: torch.Tensor
    max_values: torch.Tensor
    contexts: TopContexts
    hist_counts: torch.Tensor
    hist_edges: torch.Tensor
    sample: EvalData
    token_text: Callable[[int], str]
    model_name: str = ""
    hook_name: str = ""
    special_ids: list[int] = field(default_factory=list)
    _row: dict[int, int] = field(default_factory=dict, repr=False)

    def row(self, latent: int) -> int:
        """The row of ``latent`` in the per-latent tensors (``contexts``, ``hist_counts``)."""
        if not self._row:
            self._row.update({latent: i for i, latent in enumerate(self.latents)})
        return self._row[latent]

    def top_contexts(self, latent: int) -> list[Context]:
        """The latent's top contexts, best first (only those where it fired)."""
        i, c = self.row(latent), self.contexts
        out = []
        for j in range(c.max_values.shape[1]):
            best = float(c.max_values[i, j])
            if not best > 0:
                break
            values = [float(v) for v in c.acts[i, j]]
            out.append(
                Context(
                    tokens=[self.token_text(int(t)) for t in c.tokens[i, j]],
                    values=values,
                    max_value=best,
                    max_index=max(range(len(values)), key=values.__getitem__),
                    context=int(c.context[i, j]),
                    start=int(c.start[i, j]),
                )
            )
        return out

    def sample_latents(
        self, latents: list[int] | None = None, contexts: int = 8
    ) -> Iterator[torch.Tensor]:
        """The SAE's activations on :attr:`sample`, ``contexts`` contexts at a time:
        ``(contexts, context_size, len(latents))`` on the CPU, each context encoded whole
        (window architectures see every position in order); ``latents`` defaults to
        :attr:`latents`. Memory: one batch, whatever the sample's size."""
        import torch

        from sae_lens_ext.browse.collect import encode_contexts

        columns = torch.tensor(self.latents if latents is None else latents, dtype=torch.long)
        for seqs in self.sample.activations.split(contexts):
            acts = encode_contexts(self.sae, seqs)
            yield acts.index_select(-1, columns.to(acts.device)).float().cpu()
