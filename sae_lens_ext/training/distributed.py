"""Data-parallel training under ``torchrun``: the one place that wires ``torch.distributed``.

``torchrun --nproc_per_node N`` starts N copies of a command with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`process_group` sets the process group up from them (NCCL when the SAE trains on
CUDA, gloo on CPUs; one device per rank, ``cuda:LOCAL_RANK``) and tears it down. Started
without torchrun (or with one process) it does nothing, and every helper here is then a
no-op that returns its input, so callers never branch on the number of processes.

Services (all built on ``torch.distributed`` primitives):

- reductions, in place: :func:`all_reduce_sum_`, :func:`all_reduce_mean_`,
  :func:`all_reduce_min_`, :func:`all_reduce_max_`; :func:`broadcast_` from rank 0;
  :func:`all_gather_rows` (the global batch, rank-major);
- gradient averaging: :func:`average_gradients` registers a post-accumulate-grad hook on
  each parameter, so that ``.grad`` is the mean over ranks as soon as backward has
  written it, i.e. before upstream's trainer clips the gradient norm and steps Adam;
- control on a CPU (gloo) group, with no device sync: :func:`any_rank`,
  :class:`StopAgreement` (Ctrl-C on any rank stops every rank at the same step),
  :func:`gather_objects`, :func:`broadcast_object`, :func:`barrier`, :func:`main_first`;
- :func:`check_replicas`: raise if the ranks' copies of some tensors differ;
- :class:`ProcessGroupCollectives`: the reductions a model or a loss term may ask for
  inside a step (``batch_mean`` of a batch statistic, the global batch of a resample),
  which the data-parallel layer (:mod:`sae_lens_ext.run.replicas`) gives each SAE that
  takes them. Models and loss terms hold no distributed code: they call the
  ``BatchCollectives`` they are given, the identity in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T_OBJECT = TypeVar("T_OBJECT")

#: How long a rank waits for the others at a collective (rank 0 alone loads the model and
#: dataset first, and writes checkpoints and outputs while the others wait).
TIMEOUT = timedelta(hours=2)

_control: Any = None  # gloo group for host-side control messages (None: the default group)


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes outputs, logs and checkpoints."""
    return rank() == 0


def rank_device(device: str) -> str:
    """The device of this rank: ``cuda``/``cuda:K`` becomes ``cuda:LOCAL_RANK`` under
    torchrun (one GPU per process); any other device is kept."""
    if launched_world_size() > 1 and str(device).startswith("cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return str(device)


@contextlib.contextmanager
def process_group(device: str) -> Iterator[str]:
    """Set up the process group from torchrun's environment for the life of the block
    (NCCL for a CUDA ``device``, gloo otherwise) and yield this rank's device. Without
    torchrun, or when a group already exists, yield ``rank_device(device)`` and do nothing."""
    if launched_world_size() <= 1 or dist.is_initialized():
        yield rank_device(device)
        return
    global _control
    own = rank_device(device)
    cuda = own.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(own))
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        timeout=TIMEOUT,
        device_id=torch.device(own) if cuda else None,
    )
    _control = dist.new_group(backend="gloo", timeout=TIMEOUT) if cuda else None
    try:
        barrier()  # every rank is up (and has checked its arguments) before any work
        yield own
    finally:
        _control = None
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------
# Tensor collectives (on the tensors' own device)
# --------------------------------------------------------------------------------------
def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; returns it (no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks, in place (sum, then divide: gloo has no AVG)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def all_reduce_min_(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with rank ``src``'s, in place."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on all ranks) stacked along dim 0, rank 0 first:
    the global batch when each rank holds its block of rows."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class ProcessGroupCollectives:
    """The ``BatchCollectives`` of an SAE trained by several processes (see
    :class:`sae_lens_ext.training.loss_terms.BatchCollectives`)."""

    def __init__(self) -> None:
        self.processes = world_size()

    def batch_mean(self, value: torch.Tensor) -> torch.Tensor:
        return all_reduce_mean_(value)

    def gather_rows(self, value: torch.Tensor) -> torch.Tensor:
        return all_gather_rows(value)

    def from_main(self, obj: T_OBJECT) -> T_OBJECT:
        return broadcast_object(to_cpu(obj))  # tensors travel by pickle: on the CPU


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples, dataclasses) on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(to_cpu(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **fields)
    return obj


def average_gradients(module: torch.nn.Module) -> Callable[[], None]:
    """Make each parameter's ``.grad`` the mean over ranks as soon as backward has
    accumulated it (before any clipping or optimizer step); return a function that removes
    the hooks. Every rank runs the same graph, so the hooks fire in the same order."""
    if not is_distributed():
        return lambda: None
    handles = [
        p.register_post_accumulate_grad_hook(_average_grad)
        for p in module.parameters()
        if p.requires_grad
    ]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def _average_grad(param: torch.Tensor) -> None:
    if param.grad is not None:
        all_reduce_mean_(param.grad)


def broadcast_module_(module: torch.nn.Module, *, parameters: bool = True) -> None:
    """Give every rank rank 0's buffers (and parameters), as DDP does at construction
    (parameters) and before each forward (buffers): one broadcast per dtype and device."""
    if not is_distributed():
        return
    tensors = list(module.buffers())
    if parameters:
        tensors += list(module.parameters())
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    with torch.no_grad():
        for group in groups.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            dist.broadcast(flat, src=0)
            offset = 0
            for tensor in group:
                tensor.data.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()


@torch.no_grad()
def check_replicas(named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Raise ``RuntimeError`` naming the first tensor whose copies differ across ranks.

    Each tensor's checksum (sums over all, every 3rd and every 7th element: sensitive to
    values and to most permutations, no copy of the tensor) is compared exactly: replicas
    hold bit-identical tensors, and identical inputs give identical sums. One host sync."""
    if not is_distributed():
        return
    items = list(named)
    if not items:
        return
    sums = []
    for _, tensor in items:
        flat = tensor.detach().reshape(-1)
        parts = (flat, flat[::3], flat[1::7])
        sums.append(torch.stack([p.sum(dtype=torch.float64) for p in parts]))
    local = torch.stack(sums)
    low, high = all_reduce_min_(local.clone()), all_reduce_max_(local.clone())
    differs = (low != high).any(dim=1).tolist()
    if any(differs):
        name = items[differs.index(True)][0]
        raise RuntimeError(
            f"data-parallel ranks diverged: {name} differs across the {world_size()} ranks "
            "(a per-rank statistic reached the SAE's state without a reduction)"
        )


# --------------------------------------------------------------------------------------
# Host-side control (a gloo group: no device sync)
# --------------------------------------------------------------------------------------
def barrier() -> None:
    if is_distributed():
        dist.barrier(group=_control)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (downloads, dataset caches), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (the same answer on every rank)."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control)
    return bool(value.item())  # a CPU tensor: no device sync


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (``None`` elsewhere); ``[obj]`` in a single process.
    Tensors inside travel by pickle: keep them on the CPU."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0, group=_control)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (tensors inside: on the CPU)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_control)
    return box[0]


class StopAgreement:
    """Agree, every step and without stalling it, on whether any rank asked to stop.

    :meth:`poll` posts this rank's flag (an asynchronous all-reduce on the CPU group) and
    returns the agreed answer of the previous poll, so all ranks stop at the same step one
    step after the first request. In a single process it returns the flag itself.
    """

    def __init__(self) -> None:
        self._pending: tuple[Any, torch.Tensor] | None = None

    def poll(self, requested: bool) -> bool:
        if not is_distributed():
            return requested
        stop = self._collect()
        value = torch.tensor([int(requested)])
        work = dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control, async_op=True)
        self._pending = (work, value)
        return stop

    def _collect(self) -> bool:
        if self._pending is None:
            return False
        work, value = self._pending
        self._pending = None
        work.wait()
        return bool(value.item())

    def close(self) -> None:
        """Wait for the last posted poll (call on every rank before the group ends)."""
        self._collect()
