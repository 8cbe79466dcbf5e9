"""Training batches from upstream's cached activations, for every architecture.

Upstream's ``CacheActivationsRunner`` writes a Hugging Face dataset (``save_to_disk``)
with one row per context: a column named after the hook holding ``(context_size, d_in)``
activations in position order, and ``token_ids``. Its ``shuffle`` option shuffles rows,
i.e. whole contexts, of the dataset it returns and pushes to the Hub (the folder keeps the
order in which contexts were cached); either way the positions inside a row stay in
order, so windows of consecutive positions survive caching.

:func:`open_cache` reads the layout without loading activations and
:func:`validate_cache` checks it against the run's settings (one line naming the setting).
:class:`CachedActivationBatches` serves batches: each epoch it reads the rows in a random
order of contiguous chunks, keeps a buffer of chunks cut into windows and shuffles whole
windows (:class:`~sae_lens_ext.data.windows.WindowBuffer`; a window of 1 position is a token
mixing buffer). A data stream ``s`` of ``S`` reads the contiguous shard ``s`` of the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from typing_extensions import override

from sae_lens_ext.data.windows import (
    BatchLayoutError,
    WindowBuffer,
    check_finite,
    validate_window_layout,
)


class CacheLayoutError(ValueError):
    """Cached activations that do not fit the run's settings."""


@dataclass(frozen=True)
class CacheLayout:
    """What a cache holds: rows (contexts) of ``(context_size, d_in)`` activations."""

    path: str
    hook_name: str
    n_rows: int
    context_size: int
    d_in: int


def open_cache(path: str | Path, hook_name: str) -> tuple[Any, CacheLayout]:
    """The cached dataset (memory-mapped; rows as torch tensors) and its layout."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise CacheLayoutError(
            f"--cached_activations_path {path}: not a dataset saved by upstream's "
            "CacheActivationsRunner (no dataset_info.json / state.json)"
        ) from exc
    if isinstance(dataset, datasets.DatasetDict):
        raise CacheLayoutError(
            f"--cached_activations_path {path}: holds several splits "
            f"({', '.join(dataset)}); give the folder of one split"
        )
    if hook_name not in dataset.column_names:
        raise CacheLayoutError(
            f"--hook_name {hook_name}: the cached activations at {path} hold no such column "
            f"(columns: {', '.join(dataset.column_names)}); give the hook they were cached for"
        )
    shape = tuple(dataset.features[hook_name].shape)
    if len(shape) != 2:
        raise CacheLayoutError(
            f"--cached_activations_path {path}: column {hook_name} has shape {shape}, "
            "expected (context_size, d_in)"
        )
    dataset.set_format(type="torch", columns=[hook_name])
    return dataset, CacheLayout(str(path), hook_name, len(dataset), shape[0], shape[1])


def validate_cache(
    layout: CacheLayout,
    *,
    d_in: int,
    context_size: int,
    window: int,
    batch_size: int,
    n_streams: int,
    rows_per_read: int,
    n_reads_in_buffer: int,
) -> None:
    """Raise :class:`CacheLayoutError` or :class:`BatchLayoutError` (one line naming the
    setting) unless ``n_streams`` streams can serve batches of ``batch_size`` rows in whole
    windows of ``window`` positions from this cache."""
    where = f"the cached activations at {layout.path}"
    if layout.d_in != d_in:
        raise CacheLayoutError(
            f"--d_in {d_in}: {where} have width {layout.d_in}; set --d_in {layout.d_in}"
        )
    if layout.context_size != context_size:
        raise CacheLayoutError(
            f"--context_size {context_size}: {where} hold contexts of {layout.context_size} "
            f"positions; set --context_size {layout.context_size}"
        )
    validate_window_layout(
        window,
        batch_size=batch_size,
        context_size=layout.context_size,
        context_setting="context_size (of the cached activations)",
    )
    per_stream = layout.n_rows // n_streams
    if per_stream < 1:
        raise CacheLayoutError(
            f"--data-streams {n_streams}: {where} hold {layout.n_rows} contexts, fewer than "
            "the data streams; lower --data-streams or cache more tokens"
        )
    read = min(rows_per_read, per_stream)
    capacity = max(2, n_reads_in_buffer) * read * (layout.context_size // max(1, window))
    needed_windows = 2 * (batch_size // n_streams) // max(1, window)
    if needed_windows > capacity:
        reads = math.ceil(needed_windows / (read * (layout.context_size // max(1, window))))
        raise BatchLayoutError(
            f"n_batches_in_buffer={n_reads_in_buffer}: a batch of {batch_size // n_streams} rows "
            f"per data stream needs more than half of a buffer of {capacity // 2 * 2} windows; "
            f"set --n_batches_in_buffer to at least {reads}"
        )


def stream_shard(dataset: Any, stream: int, n_streams: int) -> Any:
    """The rows data stream ``stream`` of ``n_streams`` reads: a contiguous shard."""
    return dataset.shard(num_shards=n_streams, index=stream, contiguous=True)


class CachedActivationBatches(WindowBuffer):
    """Shuffled batches of whole windows from cached activations (module docstring).

    Args:
        dataset: the cached rows (from :func:`open_cache`, possibly a :func:`stream_shard`).
        hook_name: the activation column.
        window, batch_size: as :class:`~sae_lens_ext.data.windows.WindowBuffer`.
        rows_per_read: contexts per read (a contiguous chunk of rows).
        n_reads_in_buffer: reads the buffer holds.
        seed: seed of the chunk order and of the window shuffle.
        device, dtype: where and in what precision batches are served.
    """

    def __init__(
        self,
        dataset: Any,
        hook_name: str,
        window: int,
        batch_size: int,
        rows_per_read: int = 32,
        n_reads_in_buffer: int = 8,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(dataset) == 0:
            raise CacheLayoutError("the cached activations hold no rows")
        self.dataset, self.hook_name = dataset, hook_name
        self.rows_per_read = max(1, min(rows_per_read, len(dataset)))
        self.device, self.dtype = torch.device(device), dtype
        self.order_generator = torch.Generator().manual_seed(seed + 1)
        self.epoch = 0
        self._chunks = torch.empty(0, dtype=torch.long)  # first rows of the chunks to read
        super().__init__(window, batch_size, n_reads_in_buffer, seed)

    def _new_epoch(self) -> torch.Tensor:
        n, r = len(self.dataset), self.rows_per_read
        n_chunks, slack = n // r, n % r
        offset = (
            int(torch.randint(0, slack + 1, (1,), generator=self.order_generator)) if slack else 0
        )
        self.epoch += 1
        return offset + r * torch.randperm(n_chunks, generator=self.order_generator)

    @override
    def read(self) -> torch.Tensor:
        if self._chunks.numel() == 0:
            self._chunks = self._new_epoch()
        start, self._chunks = int(self._chunks[0]), self._chunks[1:]
        acts = self.dataset[start : start + self.rows_per_read][self.hook_name]
        acts = acts.to(self.device, self.dtype)
        check_finite(acts, f"cached activations of rows {start}..{start + self.rows_per_read - 1}")
        return acts

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "order_generator": self.order_generator.get_state(),
            "epoch": self.epoch,
            "chunks": self._chunks.clone(),
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.order_generator.set_state(state["order_generator"])
        self.epoch, self._chunks = state["epoch"], state["chunks"]
