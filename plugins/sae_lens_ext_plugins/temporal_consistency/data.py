"""Synthetic sequences with ground truth, and LM sequences for the metrics.

- :class:`SyntheticSequences` (a core service, from ``sae_lens_ext.api``; named here
  too): sequences whose features persist over positions (each feature a sticky on/off
  Markov chain with its own persistence), with ground truth;
- :func:`lm_sequence_activations`: held-out sequences of a language model's activations.
- Batches of whole windows of consecutive positions are a core service:
  :class:`sae_lens_ext.data.windows.WindowShuffledBatches` (``SyntheticSequences.batches``)
  and :class:`sae_lens_ext.data.windows.WindowShuffledLMBatches`.
"""

from __future__ import annotations

from typing import Any

import torch

from sae_lens_ext.api import SyntheticSequenceConfig, SyntheticSequences

__all__ = ["SyntheticSequenceConfig", "SyntheticSequences", "lm_sequence_activations"]


@torch.no_grad()
def lm_sequence_activations(store: Any, n_sequences: int) -> torch.Tensor:
    """``(n_sequences, context_size, d_in)`` activations read from an ``ActivationsStore``."""
    out: list[torch.Tensor] = []
    n = 0
    while n < n_sequences:
        acts = store.get_activations(store.get_batch_tokens())
        acts = acts.reshape(acts.shape[0], acts.shape[1], -1)
        out.append(acts)
        n += acts.shape[0]
    return torch.cat(out)[:n_sequences]
