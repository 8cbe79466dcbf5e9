"""Data-parallel pieces, each on its own: data streams, cached-activation batches and their
layout checks, and the torch.distributed services on two real (gloo) processes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from sae_lens_ext.data.streams import StreamBlocks, check_streams
from sae_lens_ext.data.windows import BatchLayoutError


def noisy_stream(s: int, rows: int):
    """A stream drawing from the global generator (as SAE-Lens's SyntheticModel does)."""
    while True:
        yield torch.randn(rows, 3) + 100 * s


def test_ranks_serve_blocks_whose_concatenation_is_the_one_process_batch():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    one = StreamBlocks(noisy_stream, 8, 4, seed=7)
    ranks = [StreamBlocks(noisy_stream, 8, 4, seed=7, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):
        batch = next(one)
        assert batch.shape == (8, 3)
        assert torch.equal(batch, torch.cat([next(r) for r in ranks]))
    assert torch.equal(torch.get_rng_state(), before)  # streams never touch the global RNG
    assert (batch[:2] < 50).all() and (batch[6:] > 250).all()  # block s is stream s


def test_stream_state_resumes_each_ranks_position():
    ranks = [StreamBlocks(noisy_stream, 8, 4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        next(r)
    states = [r.state_dict() for r in ranks]
    expected = [next(r) for r in ranks]
    fresh = [StreamBlocks(noisy_stream, 8, 4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for r, state in zip(fresh, states, strict=True):
        r.load_state_dict(state)
    assert all(torch.equal(e, next(r)) for e, r in zip(expected, fresh, strict=True))
    with pytest.raises(ValueError, match="written with 4 data streams, this run has 2"):
        StreamBlocks(noisy_stream, 8, 2, seed=1).load_state_dict(states[0])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((8, 3, 2), "--data-streams 3: .*multiple of 2"),
        ((10, 4, 2), "--train_batch_size_tokens 10 is not a multiple of --data-streams 4"),
        ((24, 4, 1, 4), "serves 6 rows, not whole windows of 4.*multiple of 16"),
    ],
)
def test_stream_layout_errors_name_the_setting(args, match):
    with pytest.raises(BatchLayoutError, match=match):
        check_streams(*args)


# --- cached activations -------------------------------------------------------------------
def test_cached_batches_are_whole_windows_of_consecutive_cached_positions(tiny_cache: Path):
    from sae_lens_ext.data.cached import CachedActivationBatches, open_cache, stream_shard

    dataset, layout = open_cache(tiny_cache, "transformer.h.0")
    assert (layout.n_rows, layout.context_size, layout.d_in) == (128, 32, 64)
    acts = dataset[:]["transformer.h.0"]  # (rows, positions, d_in)
    where: dict[tuple[float, ...], list[tuple[int, int]]] = {}
    for r in range(128):
        for p, v in enumerate(acts[r]):
            where.setdefault(tuple(v.tolist()), []).append((r, p))
    shard = stream_shard(dataset, 1, 2)  # rows 64..127
    batches = CachedActivationBatches(shard, "transformer.h.0", 4, 64, rows_per_read=8,
                                      n_reads_in_buffer=4, seed=3)  # fmt: skip
    firsts = set()
    for _ in range(12):  # more than a buffer: refills, across an epoch
        for w in next(batches).reshape(-1, 4, 64):
            # some position of shard 1 (equal vectors: e.g. the BOS at every row's start)
            # where this window starts, its 4 rows then at consecutive positions
            starts = [
                (r, p)
                for r, p in where[tuple(w[0].tolist())]
                if r >= 64 and p % 4 == 0 and torch.equal(acts[r, p : p + 4], w)
            ]
            assert starts, "a window that is not 4 consecutive positions of one context"
            firsts.add(starts[0])
    state = batches.state_dict()
    expected = [next(batches) for _ in range(5)]
    resumed = CachedActivationBatches(shard, "transformer.h.0", 4, 64, rows_per_read=8,
                                      n_reads_in_buffer=4, seed=3)  # fmt: skip
    resumed.load_state_dict(state)
    assert all(torch.equal(e, next(resumed)) for e in expected)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--hook_name", "transformer.h.1"], "--hook_name transformer.h.1: the cached .* no such column"),
        (["--d_in", "32"], "--d_in 32: the cached activations .* width 64; set --d_in 64"),
        (["--context_size", "64"], "--context_size 64: .* contexts of 32 positions; set --context_size 32"),
        (["--architecture", "temporal_consistency", "--temporal_window", "5",
          "--train_batch_size_tokens", "320"], "context_size=32 .*straddle.*multiple of 5"),
        (["--n_batches_in_buffer", "8", "--store_batch_size_prompts", "1"],
         "set --n_batches_in_buffer to at least 16"),
    ],
)  # fmt: skip
def test_cache_layout_errors_name_the_setting(tiny_cache: Path, tmp_path: Path, flags, match):
    from sae_lens_ext.errors import CliError
    from sae_lens_ext.run.lm import parse_config

    args = ["--architecture", "standard", "--hook_name", "transformer.h.0", "--d_in", "64",
            "--context_size", "32", "--train_batch_size_tokens", "256",
            "--use_cached_activations", "True", "--cached_activations_path", str(tiny_cache),
            "--output_path", str(tmp_path / "out"), *flags]  # fmt: skip
    with pytest.raises(CliError, match=match):
        parse_config(args, None)


# --- torch.distributed services on two processes ------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _services(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))  # fmt: skip
    from sae_lens_ext.training import distributed
    from sae_lens_ext.training.after_step import TrainingGuard

    with distributed.process_group("cpu") as device:
        assert device == "cpu" and distributed.world_size() == 2
        # gradients: the mean over ranks, already when backward returns
        layer = torch.nn.Linear(2, 1, bias=False)
        torch.nn.init.constant_(layer.weight, 1.0)
        remove = distributed.average_gradients(layer)
        layer(torch.full((1, 2), float(rank + 1))).sum().backward()
        assert torch.equal(layer.weight.grad, torch.full((1, 2), 1.5))
        remove()
        rows = distributed.all_gather_rows(torch.full((2, 1), float(rank)))
        assert rows.flatten().tolist() == [0, 0, 1, 1]
        assert distributed.broadcast_object({"rank": rank}) == {"rank": 0}
        assert distributed.any_rank(rank == 1) and not distributed.any_rank(False)
        # replicas: identical passes, a difference on one rank is named on every rank
        distributed.check_replicas([("w", torch.arange(6.0))])
        with pytest.raises(RuntimeError, match="diverged: w differs across the 2 ranks"):
            distributed.check_replicas([("w", torch.arange(6.0) + rank)])
        # the guard: rank 1 stops firing, rank 0 does not -> not silent; NaN on rank 1 only
        guard = TrainingGuard(max_silent_steps=2)
        for step in range(3):
            acts = torch.ones(2, 3) if rank == 0 else torch.zeros(2, 3)
            guard.observe(step, torch.tensor(1.0), torch.zeros(2, 3), acts)
        guard.synchronize()
        guard.check()
        loss = torch.tensor(float("nan") if rank == 1 else 1.0)
        guard.observe(3, loss, torch.zeros(2, 3), torch.ones(2, 3))
        guard.synchronize()
        with pytest.raises(FloatingPointError, match="training step 3: loss is not finite"):
            guard.check()
        _replica_sync(rank)
        # a stop asked on one rank stops both, one step later, at the same step
        stop = distributed.StopAgreement()
        answers = [stop.poll(rank == 1 and step >= 2) for step in range(5)]
        stop.close()
        assert answers == [False, False, False, True, True]


def _replica_sync(rank: int) -> None:
    """The loop's per-step reductions on a stand-in trainer (3 latents)."""
    from types import SimpleNamespace

    from sae_lens_ext.run.replicas import ReplicaSync

    torch.manual_seed(rank)  # different initialisations: start() gives rank 0's
    trainer = SimpleNamespace(
        sae=torch.nn.Linear(2, 3),
        act_freq_scores=torch.tensor([5.0, 0.0, 1.0]),
        n_forward_passes_since_fired=torch.tensor([0.0, 7.0, 3.0]),
        n_training_samples=0,
    )
    sync = ReplicaSync(trainer)
    sync.start()
    sync.before_step()
    # what upstream's step does with this rank's block of 4 rows: latent 1 fires on rank 1
    # only (twice), latent 2 on neither, latent 0 on both (once each)
    trainer.n_training_samples += 4
    trainer.act_freq_scores += torch.tensor([1.0, 2.0 * rank, 0.0])
    trainer.n_forward_passes_since_fired = torch.tensor([0.0, 8.0 - 8 * rank, 4.0])
    sync.after_step(local_rows=4)
    assert trainer.n_training_samples == 8  # the global batch
    assert trainer.act_freq_scores.tolist() == [7.0, 2.0, 1.0]
    assert trainer.n_forward_passes_since_fired.tolist() == [0.0, 0.0, 4.0]
    sync.compare_permutation(torch.tensor([2, 0, 1]))
    sync.check()  # same parameters, counters and permutation everywhere
    sync.compare_permutation(torch.tensor([2, 0, 1]) if rank == 0 else torch.tensor([0, 2, 1]))
    with pytest.raises(RuntimeError, match="permutation of the latents differed"):
        sync.check()
    sync.stop()


def test_distributed_services_on_two_gloo_processes():
    import torch.multiprocessing as mp

    mp.spawn(_services, args=(_free_port(),), nprocs=2, join=True)
