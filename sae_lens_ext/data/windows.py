"""Batches of whole windows of consecutive positions: a core service for any architecture.

An architecture whose training needs consecutive positions together in a batch says so
through a small protocol: its (training or inference) config has a method
``batch_window() -> int``, the number of consecutive positions of one sequence that a
training batch must keep together (1, or no such method: none). A batch of ``N`` rows is
then ``N / w`` windows; rows ``[k*w, (k+1)*w)`` are positions ``o..o+w-1`` of one sequence.

- :func:`validate_window_layout` is the one check of a layout (batch and context
  multiples, window <= context, no token filtering or mixing), run when a provider is
  built, before any model is loaded.
- :class:`WindowShuffledBatches` serves such batches from ``(n_seq, seq_len, d_in)``
  sequences in memory; :class:`WindowBuffer` from any source of sequences read block by
  block (:class:`WindowShuffledLMBatches`: an upstream ``ActivationsStore``;
  :class:`sae_lens_ext.data.cached.CachedActivationBatches`: upstream's cached activations).
  All shuffle whole windows and are resumable through ``state_dict``/``load_state_dict``.
- :func:`check_step_layout` is what a loss term calls at each step: the cheap shape check
  every step, and once per SAE a look at the data source when it is not one of ours.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from typing_extensions import override


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise ``FloatingPointError`` naming ``what`` and the first bad index if ``tensor``
    holds NaN or inf (one host-device sync: call it on data, not in a training step)."""
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0][:-1])
        raise FloatingPointError(
            f"{what} contain NaN/inf (first at index {index}); check the model, hook and dtype"
        )


class BatchLayoutError(ValueError):
    """Training batches cannot hold whole windows of consecutive positions."""


@runtime_checkable
class BatchWindowConfig(Protocol):
    """An SAE config (training or inference) whose training batches must keep windows of
    consecutive positions of one sequence together."""

    def batch_window(self) -> int:
        """Consecutive positions a training batch must keep together (1: none)."""
        ...


@runtime_checkable
class ArchitectureWindowConfig(Protocol):
    """An SAE config whose *encoder* reads several consecutive positions together (over
    1, SAE-Bench's benches that encode lone tokens refuse the SAE)."""

    def architecture_window(self) -> int:
        """Consecutive positions the encoder itself reads together (1: each alone)."""
        ...


def batch_window(cfg: Any) -> int:
    """Consecutive positions a training batch of this SAE config must keep together (>= 1)."""
    return max(1, int(cfg.batch_window())) if isinstance(cfg, BatchWindowConfig) else 1


def shared_window(windows: list[int]) -> int:
    """One layout serving several SAEs: the lcm of their windows."""
    return math.lcm(1, *windows)


def validate_window_layout(
    window: int,
    *,
    batch_size: int | None = None,
    context_size: int | None = None,
    exclude_special_tokens: Any = None,
    mixing_fraction: float | None = None,
    batch_setting: str = "train_batch_size_tokens",
    context_setting: str = "context_size",
    context_multiple: bool = True,
) -> None:
    """Raise :class:`BatchLayoutError` (one line naming the setting to change) unless
    batches of ``batch_size`` rows from contexts of ``context_size`` positions can be
    whole windows of ``window`` consecutive positions. ``None`` skips a check;
    ``context_multiple=False`` allows a context that is not a multiple of the window
    (a provider that moves its window grid, as :class:`WindowShuffledBatches` does)."""
    if window <= 1:
        return
    what = f"the SAE trains on windows of {window} consecutive positions"
    if context_size is not None:
        if window > context_size:
            raise BatchLayoutError(
                f"{context_setting}={context_size}: {what}, more than a context holds; "
                f"raise {context_setting} to at least {window} or lower the SAE's window"
            )
        if context_multiple and context_size % window:
            raise BatchLayoutError(
                f"{context_setting}={context_size} (after seqpos_slice): {what}, so windows "
                f"would straddle two sequences; set {context_setting} to a multiple of {window}"
            )
    if batch_size is not None and (batch_size <= 0 or batch_size % window):
        raise BatchLayoutError(
            f"{batch_setting}={batch_size}: {what}; set {batch_setting} to a multiple of {window}"
        )
    if exclude_special_tokens not in (None, False, []):
        raise BatchLayoutError(
            f"exclude_special_tokens removes rows, and {what}; set exclude_special_tokens False"
        )
    if mixing_fraction not in (None, 0, 0.0):
        raise BatchLayoutError(
            f"activations_mixing_fraction={mixing_fraction} shuffles single tokens, and "
            f"{what}; set activations_mixing_fraction 0"
        )


class WindowShuffledBatches(Iterator[torch.Tensor]):
    """Batches of whole windows of consecutive positions, shuffled by window.

    Args:
        activations: ``(n_seq, seq_len, d_in)``.
        window: positions per window.
        batch_size: rows per batch; a multiple of ``window``.
        seed: seed of the shuffle. Each epoch reshuffles, and the window grid gets a
            random offset in ``[0, seq_len % window]`` so that every position is used.

    Iterates forever (epochs chain). Resumable: ``state_dict()`` holds the generator,
    the epoch and the windows still to serve (as sequence/position indices).
    """

    def __init__(
        self, activations: torch.Tensor, window: int, batch_size: int, seed: int = 0
    ) -> None:
        if activations.dim() != 3:
            raise ValueError(
                f"activations must be (n_seq, seq_len, d_in), got shape {tuple(activations.shape)}"
            )
        n_seq, seq_len, _ = activations.shape
        window = max(1, window)
        validate_window_layout(
            window,
            batch_size=batch_size,
            context_size=seq_len,
            batch_setting="batch_size",
            context_setting="seq_len",
            context_multiple=False,  # the window grid moves by a random offset per epoch
        )
        check_finite(activations, "activations")
        self.activations, self.window, self.batch_size = activations, window, batch_size
        self.windows_per_batch = batch_size // window
        self.windows_per_epoch = n_seq * (seq_len // window)
        if self.windows_per_batch > self.windows_per_epoch:
            raise BatchLayoutError(
                f"batch_size={batch_size} needs {self.windows_per_batch} windows but the data "
                f"hold only {self.windows_per_epoch}; lower batch_size or add sequences"
            )
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._queue = self._new_epoch()  # (n, 2): sequence, first position

    def _new_epoch(self) -> torch.Tensor:
        n_seq, seq_len, _ = self.activations.shape
        per_seq = seq_len // self.window
        slack = seq_len - per_seq * self.window
        offset = int(torch.randint(0, slack + 1, (1,), generator=self.generator)) if slack else 0
        seqs = torch.arange(n_seq).repeat_interleave(per_seq)
        starts = offset + self.window * torch.arange(per_seq).repeat(n_seq)
        order = torch.randperm(seqs.numel(), generator=self.generator)
        self.epoch += 1
        return torch.stack([seqs[order], starts[order]], dim=1)

    @override
    def __iter__(self) -> WindowShuffledBatches:
        return self

    @override
    def __next__(self) -> torch.Tensor:
        k = self.windows_per_batch
        if self._queue.shape[0] < k:
            self._queue = torch.cat([self._queue, self._new_epoch()])
        take, self._queue = self._queue[:k], self._queue[k:]
        positions = take[:, 1:] + torch.arange(self.window)
        index = (take[:, :1].to(self.activations.device), positions.to(self.activations.device))
        return self.activations[index].reshape(self.batch_size, -1)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "queue": self._queue}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self._queue = state["epoch"], state["queue"]


class WindowBuffer(Iterator[torch.Tensor]):
    """Batches of whole windows, shuffled across a buffer of sequences read from a source.

    Subclasses implement :meth:`read` (the next ``(n_seq, seq_len, d_in)`` block of
    sequences, positions in order; call it only from here). The buffer holds
    ``n_reads_in_buffer`` reads cut into windows of ``window`` consecutive positions,
    shuffled by window with a private generator; half of it is refreshed whenever it runs
    low. ``window=1`` shuffles single positions (a token mixing buffer). Resumable:
    ``state_dict()`` holds the generator, the buffer and the number of reads (a subclass
    adds its source's position).
    """

    def __init__(
        self, window: int, batch_size: int, n_reads_in_buffer: int = 8, seed: int = 0
    ) -> None:
        self.window, self.batch_size = max(1, window), batch_size
        self.n_reads_in_buffer = max(2, n_reads_in_buffer)
        self.generator = torch.Generator().manual_seed(seed)
        self.n_read = 0
        self._buffer = self._shuffled([self._read_windows() for _ in range(self.n_reads_in_buffer)])
        self.capacity = self._buffer.shape[0]  # windows in a full buffer
        if batch_size // self.window > self.capacity // 2:
            per_read = self.capacity // self.n_reads_in_buffer
            needed = math.ceil(2 * (batch_size // self.window) / per_read)
            raise BatchLayoutError(
                f"n_batches_in_buffer={n_reads_in_buffer}: a batch of {batch_size} rows needs "
                f"more than half the buffer of {self.capacity} windows; set "
                f"n_batches_in_buffer to at least {needed}"
            )

    def read(self) -> torch.Tensor:
        """The next ``(n_seq, seq_len, d_in)`` sequences of the source (override)."""
        raise NotImplementedError

    @torch.no_grad()
    def _read_windows(self) -> torch.Tensor:
        acts = self.read()
        self.n_read += 1
        return acts.reshape(-1, self.window, acts.shape[-1])  # (n_windows, w, d_in)

    def _shuffled(self, parts: list[torch.Tensor]) -> torch.Tensor:
        buffer = torch.cat(parts)
        order = torch.randperm(buffer.shape[0], generator=self.generator)
        return buffer[order.to(buffer.device)]

    @override
    def __iter__(self) -> WindowBuffer:
        return self

    @override
    def __next__(self) -> torch.Tensor:
        k = self.batch_size // self.window
        if self._buffer.shape[0] - k < self.capacity // 2:
            fresh = [self._read_windows() for _ in range(self.n_reads_in_buffer // 2)]
            self._buffer = self._shuffled([self._buffer, *fresh])
        batch, self._buffer = self._buffer[:k], self._buffer[k:]
        return batch.reshape(self.batch_size, -1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "n_read": self.n_read,
            "buffer": self._buffer.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.n_read = state["n_read"]
        self._buffer = state["buffer"].to(self._buffer.device)


class WindowShuffledLMBatches(WindowBuffer):
    """Window-shuffled batches of language-model activations from an upstream ``ActivationsStore``.

    Reads ``(store_batch_size_prompts, context_size, d_in)`` activations with the store's
    public ``get_batch_tokens`` and ``get_activations`` (whole sequences, no token
    filtering or mixing), keeps ``n_batches_in_buffer`` of them cut into windows, and
    serves batches of whole windows shuffled across the buffer (:class:`WindowBuffer`).
    ``load_state_dict`` also puts the store back at the checkpoint's position, exactly
    (:class:`~sae_lens_ext.data.lm_batches.StoreReads`).
    """

    def __init__(
        self,
        store: Any,
        window: int,
        batch_size: int,
        n_batches_in_buffer: int = 8,
        seed: int = 0,
    ) -> None:
        validate_window_layout(
            window,
            batch_size=batch_size,
            context_size=int(store.training_context_size),
            exclude_special_tokens=getattr(store, "exclude_special_tokens", None),
        )
        from sae_lens_ext.data.lm_batches import StoreReads

        self.store, self.reads = store, StoreReads(store, new_epoch_warning=False)
        super().__init__(window, batch_size, n_batches_in_buffer, seed)

    @override
    def read(self) -> torch.Tensor:
        acts = self.reads.sequences()
        check_finite(acts, f"activations of LM batch {self.n_read}")
        return acts

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reads.skip_to(int(state["n_read"]))
        super().load_state_dict(state)


# ---------------------------------------------------------------------------------------
# The check a loss term runs at each training step
# ---------------------------------------------------------------------------------------
_served: weakref.WeakSet[Any] = weakref.WeakSet()
_looked_at: weakref.WeakSet[Any] = weakref.WeakSet()


def mark_layout_served(sae: Any) -> None:
    """Record that ``sae`` is fed by a provider that validated its window layout."""
    _served.add(sae)


def check_step_layout(sae: Any, rows: int, window: int, step: int) -> None:
    """Raise :class:`BatchLayoutError` if a batch of ``rows`` rows cannot be whole windows.

    The row count is checked every step (a shape, no device sync). Once per SAE, when the
    data source is not a provider of this package (upstream's own runners), the settings
    the SAE's metadata records (context size, special-token filtering) are checked and a
    warning says what cannot be seen from here: whether the source keeps positions in order.
    Compiled code (``compile_sae``) checks the row count only.
    """
    if rows % window:
        raise BatchLayoutError(
            f"training step {step}: a batch of {rows} rows is not whole windows of {window} "
            f"consecutive positions; set train_batch_size_tokens (or batch_size) to a "
            f"multiple of {window}"
        )
    if torch.compiler.is_compiling():
        # compiled code must not guard on a weak set's contents (garbage collection can
        # change them while Dynamo builds the guard); eager steps make the check
        return
    if sae in _served or sae in _looked_at:
        return
    _looked_at.add(sae)
    metadata = getattr(sae.cfg, "metadata", None)
    context = getattr(metadata, "context_size", None)
    validate_window_layout(
        window,
        context_size=context if isinstance(context, int) and context > 0 else None,
        exclude_special_tokens=getattr(metadata, "exclude_special_tokens", None),
    )
    warnings.warn(
        f"{type(sae).__name__} trains on windows of {window} consecutive positions, and its "
        "data source is not one of sae-lens-ext's window providers, so whether the source "
        "keeps positions in order cannot be checked from here; with upstream's runners set "
        "activations_mixing_fraction=0 (or train with `sae-lens train`, which serves whole "
        "windows)",
        UserWarning,
        stacklevel=3,
    )
