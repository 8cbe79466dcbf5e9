"""What the training loop does so that data-parallel replicas stay one SAE.

Under ``torchrun`` every rank holds a replica of the SAE, upstream's ``SAETrainer`` with
the *global* trainer config (``train_batch_size_samples`` = the global batch: learning
rate schedule, checkpoint thresholds and firing statistics are those of one process
training on the global batch), and its own block of each global batch.
:class:`ReplicaSync` (no-ops in a single process):

- starts every replica from rank 0's parameters and buffers, and averages gradients as
  backward writes them (before upstream clips them);
- estimates the activation normalisation on the global batches (all ranks gathered, so
  the estimate is the single-process one);
- after each ``trainer.step``: counts the global batch in ``n_training_samples`` and
  reduces the trainer's firing counters (``act_freq_scores``: sum of this step's counts;
  ``n_forward_passes_since_fired``: 0 where any rank saw the latent fire), so the
  dead-latent mask the next step gets is the global one;
- gives an SAE that takes them (``collectives``, see
  :class:`sae_lens_ext.training.loss_terms.BatchCollectives`) the reductions it asks for inside a
  step: a model's or loss term's batch statistic becomes the global batch's
  (``batch_mean``), a resampler sees the global batch and rank 0's choice is applied;
- after the architecture's after-step work: gives every rank rank 0's buffers (as DDP's
  ``broadcast_buffers``);
- after a latent permutation (e.g. a periodic sort): records, on the device, whether the
  ranks chose different permutations;
- on checking steps: raises if they did, or if the replicas differ (parameters, buffers,
  counters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from typing_extensions import override

from sae_lens_ext.training import distributed
from sae_lens_ext.training.loss_terms import LOCAL_COLLECTIVES, BatchCollectives


@runtime_checkable
class TakesCollectives(Protocol):
    """An SAE whose steps may reduce over processes (``LossTermsMixin``)."""

    collectives: BatchCollectives


class GatheredBatches(Iterator[torch.Tensor]):
    """The global batch (every rank's block, rank 0 first) of a per-rank data source."""

    def __init__(self, data: Iterator[torch.Tensor]) -> None:
        self.data = data

    @override
    def __next__(self) -> torch.Tensor:
        return distributed.all_gather_rows(next(self.data))


class ReplicaSync:
    """Keep the data-parallel replicas of ``trainer.sae`` identical (module docstring)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.sae = trainer, trainer.sae
        self.active = distributed.is_distributed()
        self.world = distributed.world_size()
        self._remove_hooks: Callable[[], None] = lambda: None
        self._counts_before: torch.Tensor | None = None
        self._permutations_differ: torch.Tensor | None = None

    def start(self) -> None:
        """Rank 0's parameters and buffers everywhere; gradient averaging on."""
        if self.active:
            distributed.broadcast_module_(self.sae)
            self._remove_hooks = distributed.average_gradients(self.sae)
            if isinstance(self.sae, TakesCollectives):
                self.sae.collectives = distributed.ProcessGroupCollectives()

    def stop(self) -> None:
        self._remove_hooks()
        self._remove_hooks = lambda: None
        if isinstance(self.sae, TakesCollectives):
            self.sae.collectives = LOCAL_COLLECTIVES

    def normalization_batches(self, data: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        return GatheredBatches(data) if self.active else data

    def before_step(self) -> None:
        if self.active:
            self._counts_before = self.trainer.act_freq_scores.clone()

    @torch.no_grad()
    def after_step(self, local_rows: int) -> None:
        """Global samples and firing counters (one all-reduce of ``2 x d_sae`` values)."""
        if not self.active:
            return
        trainer = self.trainer
        trainer.n_training_samples += local_rows * (self.world - 1)
        before = self._counts_before
        assert before is not None
        since = trainer.n_forward_passes_since_fired
        packed = torch.cat([trainer.act_freq_scores - before, (since == 0).float()])
        distributed.all_reduce_sum_(packed)
        d_sae = before.numel()
        trainer.act_freq_scores.copy_(before + packed[:d_sae])
        since.masked_fill_(packed[d_sae:] > 0, 0)
        self._counts_before = None

    @torch.no_grad()
    def compare_permutation(self, permutation: torch.Tensor) -> None:
        """Note (device-side, checked by :meth:`check`) whether the ranks' permutations
        differ: the same buffer must give every rank the same sort."""
        if not self.active:
            return
        low = distributed.all_reduce_min_(permutation.clone())
        high = distributed.all_reduce_max_(permutation.clone())
        differ = (low != high).any()
        seen = self._permutations_differ
        self._permutations_differ = differ if seen is None else seen | differ

    def sync_buffers(self) -> None:
        if self.active:
            distributed.broadcast_module_(self.sae, parameters=False)

    def check(self) -> None:
        """Raise if the replicas differ (logging steps only: one host sync)."""
        if not self.active:
            return
        if self._permutations_differ is not None and bool(self._permutations_differ):
            raise RuntimeError(
                "data-parallel ranks diverged: an after-step permutation of the latents "
                "differed across ranks (it was computed from per-rank state)"
            )
        trainer = self.trainer
        named = [
            *self.sae.named_parameters(),
            *self.sae.named_buffers(),
            ("trainer.act_freq_scores", trainer.act_freq_scores),
            ("trainer.n_forward_passes_since_fired", trainer.n_forward_passes_since_fired),
        ]
        distributed.check_replicas(named)
