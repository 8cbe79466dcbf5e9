"""One source of training data for one process or N: global batches made of data streams.

A run's data are ``S`` independent streams (``--data-streams``); each global batch of
``B`` rows is the concatenation of one block of ``B / S`` rows from every stream, in
stream order. Rank ``r`` of ``N`` processes serves the streams ``[r S/N, (r+1) S/N)``, so
the ranks' blocks, concatenated in rank order, are exactly the batch one process serving
all ``S`` streams reads: the data (and so the trained SAE) depend on ``S``, not on the
number of processes, and each rank reads a distinct shard (its streams).

:class:`StreamBlocks` is that source. With ``S > 1`` every stream draws its random numbers
from its own torch RNG state (CPU, and the CUDA device it generates on), seeded from the
run's seed and the stream index, never from the global generator; one stream (``S = 1``)
is served as is, exactly as before streams existed. Resumable: ``state_dict()`` holds each
served stream's RNG state and its own ``state_dict()`` when it has one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from typing_extensions import override

from sae_lens_ext.data.windows import BatchLayoutError

#: Stream ``s`` of a run with seed ``seed`` draws from a generator seeded ``seed * K + s``.
SEED_STRIDE = 65_536


def check_streams(
    batch_size: int,
    n_streams: int,
    world_size: int,
    window: int = 1,
    *,
    batch_setting: str = "--train_batch_size_tokens",
    streams_setting: str = "--data-streams",
) -> None:
    """Raise :class:`BatchLayoutError` (one line naming the setting) unless ``n_streams``
    streams can serve batches of ``batch_size`` rows on ``world_size`` processes, each
    block whole windows of ``window`` positions."""
    if n_streams < 1:
        raise BatchLayoutError(f"{streams_setting} {n_streams}: must be at least 1")
    if n_streams % world_size:
        raise BatchLayoutError(
            f"{streams_setting} {n_streams}: each of the {world_size} processes must serve "
            f"the same number of data streams; set {streams_setting} to a multiple of {world_size}"
        )
    if batch_size % n_streams:
        raise BatchLayoutError(
            f"{batch_setting} {batch_size} is not a multiple of {streams_setting} "
            f"{n_streams} (every stream serves an equal block of each batch)"
        )
    if (batch_size // n_streams) % max(1, window):
        raise BatchLayoutError(
            f"{batch_setting} {batch_size}: each of the {n_streams} data streams serves "
            f"{batch_size // n_streams} rows, not whole windows of {window} consecutive "
            f"positions; set {batch_setting} to a multiple of {n_streams * window}"
        )


class _StreamRng:
    """A private torch RNG state (CPU and ``cuda_devices``) swapped in around each draw."""

    def __init__(self, seed: int, cuda_devices: list[int]) -> None:
        self.cuda_devices = cuda_devices
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            self.state = self._capture()

    def _capture(self) -> dict[str, Any]:
        return {
            "cpu": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(d) for d in self.cuda_devices],
        }

    def run(self, fn: Callable[[], Any]) -> Any:
        with torch.random.fork_rng(devices=self.cuda_devices):
            torch.set_rng_state(self.state["cpu"])
            for device, state in zip(self.cuda_devices, self.state["cuda"], strict=True):
                torch.cuda.set_rng_state(state, device)
            try:
                return fn()
            finally:
                self.state = self._capture()


class StreamBlocks(Iterator[torch.Tensor]):
    """This rank's part of global batches made of ``n_streams`` streams (module docstring).

    Args:
        make_stream: ``make_stream(s, rows)`` returns stream ``s``: an iterator of
            ``(rows, d_in)`` batches (called once per served stream, under its private RNG).
        batch_size: rows of a global batch (all ranks together).
        n_streams: ``S``; a multiple of ``world_size`` dividing ``batch_size``.
        seed: the run's seed (the streams' private generators derive from it).
        rank, world_size: this process's place among the data-parallel ranks.
        cuda_device: the CUDA device the streams generate on, if any (its RNG is private
            to each stream too).
        private_rng: ``False`` leaves the streams on the global generator (for streams
            that draw in a background thread, where swapping the global state would race).
    """

    def __init__(
        self,
        make_stream: Callable[[int, int], Iterator[torch.Tensor]],
        batch_size: int,
        n_streams: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        cuda_device: torch.device | None = None,
        private_rng: bool = True,
    ) -> None:
        check_streams(batch_size, n_streams, world_size)
        per_rank = n_streams // world_size
        self.n_streams, self.rows = n_streams, batch_size // n_streams
        self.indices = list(range(rank * per_rank, (rank + 1) * per_rank))
        devices = [] if cuda_device is None else [_cuda_index(cuda_device)]
        self.rngs = (
            {s: _StreamRng(seed * SEED_STRIDE + s, devices) for s in self.indices}
            if n_streams > 1 and private_rng
            else {}
        )
        self.streams = {
            s: self._draw(s, functools.partial(make_stream, s, self.rows)) for s in self.indices
        }

    def _draw(self, s: int, fn: Callable[[], Any]) -> Any:
        rng = self.rngs.get(s)
        return fn() if rng is None else rng.run(fn)

    @override
    def __iter__(self) -> StreamBlocks:
        return self

    @override
    def __next__(self) -> torch.Tensor:
        blocks = [self._draw(s, functools.partial(next, self.streams[s])) for s in self.indices]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def state_dict(self) -> dict[str, Any]:
        streams = {}
        for s, stream in self.streams.items():
            state_dict = getattr(stream, "state_dict", None)
            rng = self.rngs.get(s)
            streams[s] = {
                "rng": None if rng is None else rng.state,
                "data": state_dict() if callable(state_dict) else None,
            }
        return {"n_streams": self.n_streams, "streams": streams}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n_streams") != self.n_streams:
            raise ValueError(
                f"--data-streams: the checkpoint was written with {state.get('n_streams')} "
                f"data streams, this run has {self.n_streams}; resume with the same value"
            )
        for s, stream in self.streams.items():
            saved = state["streams"][s]
            if saved["rng"] is not None:
                self.rngs[s].state = saved["rng"]
            if saved["data"] is not None:
                stream.load_state_dict(saved["data"])

    @property
    def resume_note(self) -> str | None:
        """What a resumed run does not reproduce, as the streams say (``None``: nothing)."""
        notes = {getattr(stream, "resume_note", None) for stream in self.streams.values()}
        return "; ".join(sorted(n for n in notes if n)) or None

    def close(self) -> None:
        for stream in self.streams.values():
            if hasattr(stream, "close"):
                stream.close()


def stream_batches(
    make_stream: Callable[[int, int], Iterator[torch.Tensor]],
    batch_size: int,
    n_streams: int,
    *,
    seed: int = 0,
    cuda_device: torch.device | None = None,
    private_rng: bool = True,
) -> Iterator[torch.Tensor]:
    """This process's data: :class:`StreamBlocks` over ``n_streams`` streams on the
    data-parallel ranks of :mod:`sae_lens_ext.training.distributed`; with one stream in one
    process, that stream itself (``make_stream(0, batch_size)``)."""
    from sae_lens_ext.training import distributed

    world = distributed.world_size()
    if n_streams == 1 and world == 1:
        return make_stream(0, batch_size)
    return StreamBlocks(
        make_stream,
        batch_size,
        n_streams,
        seed=seed,
        rank=distributed.rank(),
        world_size=world,
        cuda_device=cuda_device,
        private_rng=private_rng,
    )


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()
