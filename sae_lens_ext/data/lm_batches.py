"""Training batches from upstream's ``ActivationsStore`` that a checkpoint restores exactly.

Upstream's store checkpoints only ``n_dataset_processed`` (the dataset rows handed out so
far, a position that a long row or a partly used context makes inexact), and its mixing
buffer lives inside a generator that no checkpoint can hold. Here:

- :class:`StoreReads` reads the store through its public methods and counts the reads;
  :meth:`StoreReads.skip_to` replays the token reads of a checkpoint on a fresh store
  (tokenization only, no model forward), which puts the store exactly where it was,
  partly used rows included.
- :class:`MixedTokenBatches` serves what ``iter(store)`` serves: upstream's mixing buffer
  (``activations_mixing_fraction`` kept, the rest served, shuffled with the global torch
  generator at the same moments) over ``get_filtered_llm_batch`` (special tokens
  filtered, a new epoch when the dataset runs out), with the buffer in ``state_dict``.
  An uninterrupted run gets the same batches as from the store itself; a resumed run the
  same as an uninterrupted one (the loop restores the global generator).
- :class:`PrefetchedBatches` is upstream's ``PrefetchingIterator`` over such a source,
  started on the first batch (so a checkpoint's state is loaded before anything is
  prefetched). Its checkpoints hold the source's state, which is ahead of the batches
  trained on by those still in the queue: see :data:`PREFETCH_RESUME_NOTE`.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from typing_extensions import override

#: What differs after ``--resume`` when batches are prefetched (said in the messages).
PREFETCH_RESUME_NOTE = (
    "with --prefetch_llm_batches the batches prefetched at the interruption are skipped "
    "and the buffer's shuffle draws from the global generator in a background thread, so "
    "the resumed SAE is close to, not bit-identical with, an uninterrupted run's"
)


class StoreReads:
    """Reads of an upstream ``ActivationsStore``, counted so that a fresh store can be put
    back where a checkpoint left it (see the module docstring).

    ``new_epoch_warning``: a read that runs out of data starts a new epoch with upstream's
    warning (what ``iter(store)`` does); otherwise the store wraps around silently (what
    ``get_batch_tokens`` does). Replays follow the same rule.
    """

    def __init__(self, store: Any, *, new_epoch_warning: bool) -> None:
        self.store, self.new_epoch_warning, self.n = store, new_epoch_warning, 0

    def filtered_rows(self) -> torch.Tensor:
        """``(n_tokens, d_in)`` activations of one read, special tokens filtered out."""
        store = self.store
        self.n += 1
        if not self.new_epoch_warning:
            return store.get_filtered_llm_batch()
        try:
            return store.get_filtered_llm_batch(raise_on_epoch_end=True)
        except StopIteration:
            warnings.warn(
                "All samples in the training dataset have been exhausted, beginning new epoch.",
                stacklevel=2,
            )
            return store.get_filtered_llm_batch()

    def sequences(self) -> torch.Tensor:
        """``(n_seq, context, d_in)`` activations of one read, positions in order."""
        store = self.store
        self.n += 1
        acts = store.get_activations(self._tokens(move_to_model_device=True))
        return acts.reshape(acts.shape[0], acts.shape[1], -1).to(store.device)

    def _tokens(self, *, move_to_model_device: bool) -> torch.Tensor:
        store = self.store
        if not self.new_epoch_warning:
            return store.get_batch_tokens(move_to_model_device=move_to_model_device)
        try:
            return store.get_batch_tokens(
                raise_at_epoch_end=True, move_to_model_device=move_to_model_device
            )
        except StopIteration:
            return store.get_batch_tokens(move_to_model_device=move_to_model_device)

    def skip_to(self, n: int) -> None:
        """Replay token reads (no model forward) until ``n`` reads are done."""
        if n < self.n:
            raise ValueError(f"the store is {self.n - n} reads past the checkpoint's position")
        if n - self.n > 100:
            print(
                f"Restoring the data position: re-reading the tokens of {n - self.n:,} store "
                "batches (no model forward)",
                file=sys.stderr,
            )
        while self.n < n:
            self._tokens(move_to_model_device=False)
            self.n += 1


class MixedTokenBatches(Iterator[torch.Tensor]):
    """The batches ``iter(store)`` serves, resumable (see the module docstring)."""

    def __init__(self, store: Any) -> None:
        self.reads = StoreReads(store, new_epoch_warning=True)
        self.buffer_size = int(store.n_batches_in_buffer * store.training_context_size)
        self.batch_size = int(store.train_batch_size_tokens)
        self.mix_fraction = float(store.activations_mixing_fraction)
        if self.buffer_size < self.batch_size:
            raise ValueError("Buffer size must be greater than or equal to batch size")
        self._storage: torch.Tensor | None = None
        self._serving: torch.Tensor | None = None  # whole batches still to serve

    @override
    def __iter__(self) -> MixedTokenBatches:
        return self

    @override
    def __next__(self) -> torch.Tensor:
        if self._serving is None or self._serving.shape[0] == 0:
            self._serving = self._refill()
        batch, self._serving = (
            self._serving[: self.batch_size],
            self._serving[self.batch_size :],
        )
        return batch

    @torch.no_grad()
    def _refill(self) -> torch.Tensor:
        """Read until the buffer is full, shuffle it, keep ``mix_fraction`` of it and
        return the rest as whole batches (upstream's ``mixing_buffer`` step)."""
        storage = self._storage
        while storage is None or storage.shape[0] < self.buffer_size:
            rows = self.reads.filtered_rows()
            storage = rows if storage is None else torch.cat([storage, rows], dim=0)
        if self.mix_fraction > 0:
            storage = storage[torch.randperm(storage.shape[0])]
        keep = int(self.buffer_size * self.mix_fraction)
        cutoff = max(1, (storage.shape[0] - keep) // self.batch_size) * self.batch_size
        self._storage = storage[cutoff:]
        return storage[:cutoff]

    def state_dict(self) -> dict[str, Any]:
        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.cpu().clone()

        return {
            "reads": self.reads.n,
            "storage": cpu(self._storage),
            "serving": cpu(self._serving),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "n_dataset_processed" in state:  # written before this class: a position only
            load_store_position(self.reads.store, state)
            return
        device = self.reads.store.device
        self.reads.skip_to(int(state["reads"]))
        self._storage, self._serving = (
            None if state[k] is None else state[k].to(device) for k in ("storage", "serving")
        )


def load_store_position(store: Any, state: dict[str, Any]) -> None:
    """Upstream's own position restore (``n_dataset_processed``, through its public
    ``load``): for checkpoints that hold nothing better. The batches drift from an
    uninterrupted run's."""
    from safetensors.torch import save_file

    warnings.warn(
        "this checkpoint holds only the activation store's dataset position (written by an "
        "earlier sae-lens-ext): training resumes there, on batches that differ from an "
        "uninterrupted run's",
        stacklevel=2,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "store.safetensors")
        save_file({"n_dataset_processed": state["n_dataset_processed"]}, path)
        store.load(path)


class PrefetchedBatches(Iterator[torch.Tensor]):
    """Upstream's ``PrefetchingIterator`` over ``source``, started on the first batch;
    checkpoints hold the source's state (see :data:`PREFETCH_RESUME_NOTE`)."""

    resume_note = PREFETCH_RESUME_NOTE

    def __init__(self, source: Any, prefetch: bool | int) -> None:
        self.source = source
        self.size = 1 if isinstance(prefetch, bool) else int(prefetch)
        self._prefetcher: Any = None

    @override
    def __iter__(self) -> PrefetchedBatches:
        return self

    @override
    def __next__(self) -> torch.Tensor:
        if self._prefetcher is None:
            from sae_lens.training.prefetch import PrefetchingIterator

            self._prefetcher = PrefetchingIterator(iter(self.source), prefetch=self.size)
        return next(self._prefetcher)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No prefetching inside (upstream's evaluator reads the same store)."""
        if self._prefetcher is None:
            yield
            return
        with self._prefetcher.paused():
            yield

    def state_dict(self) -> Any:
        state_dict = getattr(self.source, "state_dict", None)
        if not callable(state_dict):
            return None
        with self.paused():
            return state_dict()

    def load_state_dict(self, state: Any) -> None:
        if self._prefetcher is not None:
            raise RuntimeError("load a checkpoint's data state before the first batch")
        self.source.load_state_dict(state)

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
        if hasattr(self.source, "close"):
            self.source.close()


@torch.no_grad()
def store_sequences(store: Any, tokens: int) -> torch.Tensor:
    """``(n_seq, context, d_in)`` float32 activations on the CPU: whole sequences read from
    ``store`` (public ``get_batch_tokens``/``get_activations``) until they hold at least
    ``tokens`` positions (for metrics and figures on sequences)."""
    reads, sequences, held = StoreReads(store, new_epoch_warning=False), [], 0
    while held < tokens:
        acts = reads.sequences().float().cpu()
        sequences.append(acts)
        held += acts.shape[0] * acts.shape[1]
    return torch.cat(sequences)
