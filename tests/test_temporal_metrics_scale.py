"""Temporal metrics that scale: within-sequence autocorrelation against the generator's analytic
value, blockwise redundant pairs against the dense computation and within a memory bound, and
one alive rule for every metric."""

from __future__ import annotations

import pytest
import sae_lens  # noqa: F401  (registers plugin architectures)
import torch
from sae_lens_ext_plugins.temporal_consistency.data import (
    SyntheticSequenceConfig,
    SyntheticSequences,
)
from sae_lens_ext_plugins.temporal_consistency.metrics import (
    alive_latents,
    autocorrelation,
    correlation_matrix,
    evaluate_on_sequences,
    redundant_pairs,
    redundant_pairs_blockwise,
)
from sae_lens_ext_plugins.temporal_consistency.sae import (
    TemporalConsistencySAE,
    TemporalConsistencySAEConfig,
)
from torch.profiler import ProfilerActivity, profile


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_autocorrelation_matches_the_analytic_value_of_the_chains():
    """Unit magnitudes, no jitter, no noise: each feature is its on/off chain, whose lag-k
    autocorrelation is (rho - a)^k (0 for the transient features)."""
    data = SyntheticSequences(
        SyntheticSequenceConfig(
            num_features=16,
            d_in=8,
            seq_len=128,
            n_sequences=2000,
            firing_probability=0.2,
            persistence=(0.3, 0.9),
            magnitude_std=0.0,
            magnitude_jitter=0.0,
            noise_std=0.0,
            orthogonalize=False,
            transient_fraction=0.25,
            seed=0,
        )
    )
    analytic = data.binary_autocorrelation(3)
    assert analytic[~data.is_persistent].abs().max() < 1e-6
    assert analytic[data.is_persistent, 0].min() > 0.1
    # 256k positions per feature: the largest deviation seen over seeds 0-3 was 0.007
    torch.testing.assert_close(autocorrelation(data.feature_acts, 3), analytic, rtol=0, atol=0.02)


def test_autocorrelation_pairs_never_straddle_two_sequences():
    # each sequence constant, alternating sign between sequences: inside a sequence the
    # lag-1 autocorrelation is exactly 1; a pair across a boundary would pull it below 1
    signs = torch.tensor([1.0, -1.0]).repeat(10)
    values = signs[:, None, None].expand(20, 8, 1)
    assert autocorrelation(values, 3)[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_one_alive_rule_for_every_metric():
    torch.manual_seed(0)
    varying = torch.rand(4, 16, 2)
    constant = torch.full((4, 16, 1), 0.7)  # fires everywhere, never varies
    dead = torch.zeros(4, 16, 1)
    latents = torch.cat([varying, constant, dead, varying[..., :1]], -1)
    alive = alive_latents(latents)
    assert alive.tolist() == [True, True, False, False, True]
    assert autocorrelation(latents, 1)[~alive].abs().sum() == 0
    corr = correlation_matrix(latents)
    assert corr[~alive].abs().sum() == 0 and corr[:, ~alive].abs().sum() == 0
    assert [(i, j) for i, j, _ in redundant_pairs(latents, threshold=0.99)] == [(0, 4)]
    sae = TemporalConsistencySAE(TemporalConsistencySAEConfig(d_in=5, d_sae=5))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(5))
        sae.W_dec.copy_(torch.eye(5))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    assert evaluate_on_sequences(sae, latents)["dead_latents"] == 2


@pytest.mark.parametrize("lag", [0, 1, 3])
def test_blockwise_redundant_pairs_equal_the_dense_computation(lag):
    torch.manual_seed(lag)
    base = torch.relu(torch.randn(6, 40, 30))
    latents = torch.cat(
        [
            base,
            2 * base[..., :6] + 0.05 * torch.randn(6, 40, 6),  # redundant copies
            base[..., 6:9].roll(max(lag, 1), dims=1),  # copies shifted by the lag
            torch.zeros(6, 40, 2),  # dead
        ],
        -1,
    )
    dense = redundant_pairs(correlation_matrix(latents, lag), threshold=0.5)
    assert len(dense) >= 3
    for block_size in (1, 7, 64):  # blocks that do not divide 41, and one block
        blockwise = redundant_pairs_blockwise(latents, 0.5, lag, block_size)
        assert [p[:2] for p in blockwise] == [p[:2] for p in dense]
        assert [p[2] for p in blockwise] == pytest.approx([p[2] for p in dense], abs=1e-5)


def _peak_cpu_bytes(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def test_blockwise_redundant_pairs_memory_is_bounded_by_the_block():
    """Peak CPU allocation (torch profiler) of the lag-1 path, which builds both directions."""
    n, rows = 2048, 2 * 16
    latents = torch.relu(torch.randn(2, 16, n, generator=torch.Generator().manual_seed(0)) - 1)
    small = _peak_cpu_bytes(lambda: redundant_pairs_blockwise(latents, 0.9, 1, 64))
    large = _peak_cpu_bytes(lambda: redundant_pairs_blockwise(latents, 0.9, 1, 128))
    # a few (block x d_sae) float32 buffers and float64 tiles; measured 2.6-3.1 of them
    assert small <= 4 * 64 * (n + rows) * 4
    assert large <= 4 * 128 * (n + rows) * 4
    assert small < 0.75 * large  # memory grows with the block ...
    assert large < n * n * 8 / 4  # ... and is far from one float64 d_sae x d_sae matrix


def test_hard_regime_generator_and_split_metrics():
    cfg = SyntheticSequenceConfig(
        num_features=64,
        d_in=16,
        seq_len=32,
        n_sequences=64,
        firing_probability=(0.05, 0.15),
        persistence=(0.8, 0.95),
        transient_fraction=0.5,
        orthogonalize=False,
        seed=0,
    )
    train = SyntheticSequences(cfg)
    held_out = SyntheticSequences(
        SyntheticSequenceConfig(**{**cfg.__dict__, "seed": 1}), features_from=train
    )
    assert int(train.is_persistent.sum()) == 32
    assert torch.equal(held_out.is_persistent, train.is_persistent)
    assert torch.equal(held_out.persistence, train.persistence)
    assert not torch.equal(held_out.feature_acts, train.feature_acts)
    acf = autocorrelation(held_out.feature_acts, 1)[:, 0]
    assert acf[train.is_persistent].min() > 0.5 > acf[~train.is_persistent].abs().max()
    active = (train.feature_acts > 0).float().sum(-1).mean()
    assert 4 < active < 9  # dense: about 6 of 64 features on per position
    # an SAE whose decoder is the true dictionary: MCC 1 on both kinds of features
    sae = TemporalConsistencySAE(TemporalConsistencySAEConfig(d_in=16, d_sae=64))
    with torch.no_grad():
        sae.W_dec.copy_(train.feature_vectors)
        sae.W_enc.copy_(train.feature_vectors.T)
    metrics = evaluate_on_sequences(sae, held_out)
    for key in ("mcc", "mcc_persistent", "mcc_transient"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-5)
    assert {"autocorr_error_persistent", "autocorr_error_transient"} <= set(metrics)


def test_benchmark_sparse_coding_oracle_solves_the_nonnegative_lasso(monkeypatch):
    """With an orthonormal dictionary the non-negative lasso is a shifted ReLU of x D^T."""
    from pathlib import Path

    # as when the script runs: its folder first on the path (it imports `smoke` beside it)
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from temporal_benchmark import nonnegative_lasso

    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    codes = nonnegative_lasso(x, q.T, lam=0.3, steps=50)
    torch.testing.assert_close(codes, (x @ q - 0.3).relu(), rtol=0, atol=1e-5)
