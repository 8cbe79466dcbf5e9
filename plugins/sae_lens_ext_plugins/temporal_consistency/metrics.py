"""Consistency metrics of a trained SAE on sequence activations ``(n_seq, seq_len, d_in)``.

Statistics pool every sequence and position: for latent ``i``, mean ``mu_i`` and
variance ``var_i`` over all ``n_seq * seq_len`` rows. The lag-k autocorrelation is
``mean_{s, t}((a_{s,t} - mu)(a_{s,t+k} - mu)) / var``, the mean over the
``n_seq * (seq_len - k)`` pairs ``(t, t + k)`` *inside* one sequence (a pair never joins
the end of one sequence to the start of the next).

One rule decides which latents are alive (:func:`alive_latents`): a latent is alive when
its activation varies over the evaluated tokens (float64 variance > ``ALIVE_VAR_EPS``).
Latents that never fire, or sit at one constant value, are not alive: every metric gives
them autocorrelation and correlation 0 (not NaN), leaves them out of means, pairs and
clusters, and counts them as ``dead_latents``.

Memory: statistics are computed in column chunks (float64) or row tiles (float32 matrix
products), never as a dense ``d_sae x d_sae`` float64 matrix, except in
:func:`correlation_matrix`, which returns that matrix on purpose (small SAEs only).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from sae_lens_ext.api import ALIVE_VAR_EPS

Sequences = Any  # a (n_seq, seq_len, d_in) tensor or an object with ``.activations``

CHUNK_ELEMENTS = 1 << 24  # float64 elements per column chunk (128 MiB)


def _as_tensor(sequences: Sequences) -> torch.Tensor:
    acts = getattr(sequences, "activations", sequences)
    if not isinstance(acts, torch.Tensor) or acts.dim() != 3:
        raise ValueError("sequences must be a (n_seq, seq_len, d_in) tensor")
    return acts


def _check_latents(latents: torch.Tensor) -> None:
    if latents.dim() != 3:
        raise ValueError(
            f"latents must be (n_seq, seq_len, n_latents), got shape {tuple(latents.shape)}"
        )


@torch.no_grad()
def encode_sequences(sae: Any, sequences: Sequences, batch_size: int = 8192) -> torch.Tensor:
    """Latents ``(n_seq, seq_len, d_sae)`` of ``sae`` (eval mode, per token)."""
    acts = _as_tensor(sequences)
    n_seq, seq_len, d_in = acts.shape
    flat = acts.reshape(-1, d_in)
    was_training = sae.training
    sae.eval()
    try:
        parts = [
            sae.encode(flat[i : i + batch_size].to(sae.device)).float().cpu()
            for i in range(0, flat.shape[0], batch_size)
        ]
    finally:
        sae.train(was_training)
    return torch.cat(parts).reshape(n_seq, seq_len, -1)


def _column_chunks(latents: torch.Tensor) -> Iterator[slice]:
    rows = latents.shape[0] * latents.shape[1]
    step = max(1, CHUNK_ELEMENTS // max(1, rows))
    for start in range(0, latents.shape[-1], step):
        yield slice(start, min(start + step, latents.shape[-1]))


def _pair_tiles(
    latents: torch.Tensor, lag: int, max_rows: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Row tiles ``(rows, n)`` of the pairs ``(t, t + lag)`` inside sequences: positions
    ``t`` and positions ``t + lag``, at most ``max(max_rows, seq_len - lag)`` rows each
    (views when whole sequences are taken and ``lag == 0``)."""
    n_seq, seq_len, n = latents.shape
    span = seq_len - lag
    if span <= max_rows:
        per = max(1, max_rows // span)
        for s in range(0, n_seq, per):
            yield (
                latents[s : s + per, :span].reshape(-1, n),
                latents[s : s + per, lag:].reshape(-1, n),
            )
        return
    for s in range(n_seq):
        for t in range(0, span, max_rows):
            end = min(t + max_rows, span)
            yield latents[s, t:end], latents[s, t + lag : end + lag]


@torch.no_grad()
def latent_moments(
    latents: torch.Tensor, max_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled float64 mean and variance ``(n,)`` of ``(n_seq, seq_len, n)`` values, in two
    passes over row tiles of at most ``max_rows`` rows (memory ``O(max_rows * n)``)."""
    _check_latents(latents)
    n = latents.shape[-1]
    rows = max_rows or max(1, CHUNK_ELEMENTS // max(1, n))
    total = torch.zeros(n, dtype=torch.float64, device=latents.device)
    count = 0
    for tile, _ in _pair_tiles(latents, 0, rows):
        total += tile.sum(0, dtype=torch.float64)
        count += tile.shape[0]
    mean = total / max(count, 1)
    total.zero_()
    for tile, _ in _pair_tiles(latents, 0, rows):
        total += (tile.double() - mean).pow_(2).sum(0)
    return mean.cpu(), (total / max(count, 1)).cpu()


def alive_from_variance(var: torch.Tensor) -> torch.Tensor:
    """The alive rule on precomputed variances: ``var > ALIVE_VAR_EPS``."""
    return var > ALIVE_VAR_EPS


def alive_latents(latents: torch.Tensor) -> torch.Tensor:
    """``(n,)`` bool: latents whose activation varies over the evaluated tokens (the one
    alive rule every metric here uses)."""
    return alive_from_variance(latent_moments(latents)[1])


@torch.no_grad()
def autocorrelation(latents: torch.Tensor, max_lag: int = 1) -> torch.Tensor:
    """``(n_latents, max_lag)`` lag-1..K autocorrelation of ``(n_seq, seq_len, n)`` values.

    Pairs ``(t, t + k)`` are taken inside each sequence only; mean and variance are pooled
    over every position. Latents that are not alive get 0. Computed per column chunk in
    float64 (memory ``O(n_seq * seq_len * chunk)``).
    """
    _check_latents(latents)
    if not 1 <= max_lag < latents.shape[1]:
        raise ValueError(f"max_lag must be in [1, seq_len - 1], got {max_lag}")
    out = torch.zeros(latents.shape[-1], max_lag, dtype=torch.float64)
    for cols in _column_chunks(latents):
        x = latents[..., cols].double().cpu()
        xc = x - x.mean(dim=(0, 1))
        var = xc.pow(2).mean(dim=(0, 1))
        alive = alive_from_variance(var)
        for k in range(1, max_lag + 1):
            cov = (xc[:, :-k] * xc[:, k:]).mean(dim=(0, 1))
            out[cols, k - 1] = torch.where(alive, cov / var.clamp_min(ALIVE_VAR_EPS), 0.0)
    return out.float()


def lag_autocorrelation(sae: Any, sequences: Sequences, max_lag: int = 1) -> torch.Tensor:
    """``Tensor[d_sae, max_lag]``: lag-k autocorrelation of each latent across positions."""
    return autocorrelation(encode_sequences(sae, sequences), max_lag)


def mean_lag_autocorrelation(sae: Any, sequences: Sequences, max_lag: int = 1) -> torch.Tensor:
    """``Tensor[max_lag]``: mean over alive latents of :func:`lag_autocorrelation`."""
    latents = encode_sequences(sae, sequences)
    acf = autocorrelation(latents, max_lag)
    alive = alive_latents(latents)
    return acf[alive].mean(0) if alive.any() else torch.zeros(max_lag)


def correlation_matrix(latents: torch.Tensor, lag: int = 0) -> torch.Tensor:
    """Dense ``(n, n)`` Pearson correlation of latent ``i`` at ``t`` with latent ``j`` at
    ``t + lag`` (pairs inside sequences). Float64 ``n x n``: for small ``n`` only; use
    :func:`redundant_pairs` on latents for large SAEs."""
    _check_latents(latents)
    mean, var = latent_moments(latents)
    xc = latents.double() - mean
    a, b = (xc[:, :-lag], xc[:, lag:]) if lag else (xc, xc)
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    cov = a.T @ b / a.shape[0]
    alive = alive_from_variance(var)
    inv_std = torch.where(alive, var.clamp_min(ALIVE_VAR_EPS).rsqrt(), 0.0)
    return (cov * inv_std[:, None] * inv_std[None, :]).float()


def feature_correlation(sae: Any, sequences: Sequences, lag: int = 0) -> torch.Tensor:
    """``Tensor[d_sae, d_sae]``: correlation of latent activations across all positions
    (``lag > 0``: latent ``i`` at ``t`` against latent ``j`` at ``t + lag``)."""
    return correlation_matrix(encode_sequences(sae, sequences), lag)


def _block_covariance(
    latents: torch.Tensor, cols: slice, lag: int, mean: torch.Tensor, reverse: bool, max_rows: int
) -> torch.Tensor:
    """``(len(cols), n)`` float32 covariance of latents ``cols`` at ``t`` (``reverse``: at
    ``t + lag``) with every latent at ``t + lag`` (``reverse``: at ``t``).

    Only the block is centred: ``sum (x_i - mu_i)(y_j - mu_j) = sum (x_i - mu_i) y_j -
    mu_j sum (x_i - mu_i)``, so no centred copy of all latents is made."""
    width = cols.stop - cols.start
    acc = torch.zeros(width, latents.shape[-1], dtype=torch.float32, device=latents.device)
    block_sum = torch.zeros(width, dtype=torch.float64, device=latents.device)
    count = 0
    for at_t, at_lag in _pair_tiles(latents, lag, max_rows):
        left, right = (at_lag, at_t) if reverse else (at_t, at_lag)
        centred = left[:, cols] - mean[cols]
        acc.addmm_(centred.T, right)
        block_sum += centred.sum(0, dtype=torch.float64)
        count += centred.shape[0]
    acc.addr_(block_sum.float(), mean, alpha=-1)
    return acc.div_(max(count, 1))


@torch.no_grad()
def redundant_pairs_blockwise(
    latents: torch.Tensor, threshold: float = 0.9, lag: int = 0, block_size: int = 1024
) -> list[tuple[int, int, float]]:
    """Redundant pairs from ``(n_seq, seq_len, n)`` latents without an ``n x n`` matrix.

    The correlation is computed ``block_size`` rows at a time (float32 products of one
    centred block with the raw latents; means and variances in float64) and only pairs
    ``>= threshold`` are kept: extra memory ``O(block_size * (n + seq_len))``, two blocks
    when ``lag > 0`` (both directions ``i -> j`` and ``j -> i``, as :func:`redundant_pairs`).
    """
    _check_latents(latents)
    _, seq_len, n = latents.shape
    if not 0 <= lag < seq_len:
        raise ValueError(f"lag must be in [0, seq_len - 1], got {lag}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    lat = latents.float()
    mean64, var = latent_moments(lat, block_size)
    mean = mean64.float().to(lat.device)
    alive = alive_from_variance(var)
    inv_std = torch.where(alive, var.clamp_min(ALIVE_VAR_EPS).rsqrt(), 0.0).float()
    inv_std = inv_std.to(lat.device)
    later = torch.arange(n, device=lat.device)[None, :]
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, n, block_size):
        cols = slice(start, min(start + block_size, n))
        corr = _block_covariance(lat, cols, lag, mean, False, block_size)
        if lag:
            reverse = _block_covariance(lat, cols, lag, mean, True, block_size)
            corr = torch.maximum(corr, reverse, out=corr)
            del reverse
        corr.mul_(inv_std[cols, None]).mul_(inv_std[None, :])
        rows = torch.arange(cols.start, cols.stop, device=lat.device)[:, None]
        hits = ((corr >= threshold) & (later > rows)).nonzero()
        values = corr[hits[:, 0], hits[:, 1]].tolist()
        pairs += [
            (int(i) + start, int(j), v) for (i, j), v in zip(hits.tolist(), values, strict=True)
        ]
    return sorted(pairs, key=lambda p: -p[2])


def redundant_pairs(
    source: Any,
    sequences: Sequences | None = None,
    threshold: float = 0.9,
    lag: int = 0,
    block_size: int = 1024,
) -> list[tuple[int, int, float]]:
    """Latent pairs ``(i, j, corr)``, ``i < j``, whose correlation is >= ``threshold``,
    strongest first (``lag > 0``: the larger of ``i`` at ``t`` vs ``j`` at ``t + lag`` and
    ``j`` at ``t`` vs ``i`` at ``t + lag``).

    ``source`` is an SAE (with ``sequences``), latents ``(n_seq, seq_len, n)`` (both
    computed blockwise, :func:`redundant_pairs_blockwise`), or a square correlation matrix.
    """
    if isinstance(source, torch.Tensor) and source.dim() == 2:
        sym = torch.maximum(source, source.T).triu(diagonal=1)
        idx = (sym >= threshold).nonzero()
        pairs = [(int(i), int(j), float(sym[i, j])) for i, j in idx]
        return sorted(pairs, key=lambda p: -p[2])
    if isinstance(source, torch.Tensor):
        latents = source
    elif sequences is None:
        raise ValueError("redundant_pairs: give sequences with an SAE")
    else:
        latents = encode_sequences(source, sequences)
    return redundant_pairs_blockwise(latents, threshold, lag, block_size)


@dataclass
class LatentClusters:
    """Clusters of alive latents by activation pattern.

    ``labels[i]`` is latent ``i``'s cluster (-1: dead, not clustered); ``summaries`` has one
    dict per cluster: size, mean firing rate, mean lag-1 autocorrelation, mean activation
    when firing, the peak position bucket of its position profile, and its members (up to 20,
    most frequent first)."""

    labels: torch.Tensor
    summaries: list[dict[str, Any]] = field(default_factory=list)


def latent_pattern_features(
    latents: torch.Tensor, max_lag: int = 4, n_buckets: int = 8
) -> torch.Tensor:
    """Per-latent descriptor ``(n, 2 + max_lag + n_buckets)``: log firing rate, log mean
    firing activation, lag-1..K autocorrelation and the normalised mean activation per
    position bucket."""
    _, seq_len, n = latents.shape
    flat = latents.reshape(-1, n).float()
    fires = flat != 0
    rate = fires.float().mean(0)
    mean_active = flat.abs().sum(0) / fires.sum(0).clamp_min(1)
    acf = autocorrelation(latents, min(max_lag, seq_len - 1))
    buckets = min(n_buckets, seq_len)
    edges = torch.linspace(0, seq_len, buckets + 1).long()
    profile = torch.stack(
        [latents[:, edges[b] : edges[b + 1]].abs().mean(dim=(0, 1)) for b in range(buckets)], -1
    )
    profile = profile / profile.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.cat(
        [
            torch.log10(rate.clamp_min(1e-6))[:, None],
            torch.log10(mean_active.clamp_min(1e-6))[:, None],
            acf,
            profile,
        ],
        dim=-1,
    )


def cluster_latents(
    sae: Any,
    sequences: Sequences,
    n_clusters: int = 8,
    max_lag: int = 4,
    seed: int = 0,
) -> LatentClusters:
    """Cluster alive latents by activation pattern (scikit-learn KMeans on standardised
    :func:`latent_pattern_features`)."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    latents = encode_sequences(sae, sequences)
    flat = latents.reshape(-1, latents.shape[-1])
    alive = alive_latents(latents)
    labels = torch.full((latents.shape[-1],), -1, dtype=torch.long)
    n_alive = int(alive.sum())
    if n_alive == 0:
        return LatentClusters(labels, [])
    k = max(1, min(n_clusters, n_alive))
    feats = latent_pattern_features(latents[..., alive], max_lag).numpy()
    scaled = StandardScaler().fit_transform(feats)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(scaled)
    alive_idx = alive.nonzero().flatten()
    labels[alive_idx] = torch.as_tensor(km.labels_, dtype=torch.long)
    rate = (flat != 0).float().mean(0)
    acf1 = autocorrelation(latents, 1)[:, 0]
    mean_active = flat.abs().sum(0) / (flat != 0).sum(0).clamp_min(1)
    n_profile = feats.shape[1] - 2 - min(max_lag, latents.shape[1] - 1)
    summaries = []
    for c in range(k):
        members = (labels == c).nonzero().flatten()
        order = members[rate[members].argsort(descending=True)]
        profile = feats[km.labels_ == c, -n_profile:].mean(0)
        summaries.append(
            {
                "cluster": c,
                "size": len(members),
                "firing_rate": float(rate[members].mean()),
                "lag1_autocorrelation": float(acf1[members].mean()),
                "mean_activation": float(mean_active[members].mean()),
                "peak_position_bucket": int(profile.argmax()),
                "latents": [int(i) for i in order[:20]],
            }
        )
    return LatentClusters(labels, summaries)


def match_latents(sae: Any, feature_vectors: torch.Tensor) -> torch.Tensor:
    """``(num_features,)`` latent matched to each ground-truth feature (Hungarian on
    |cos(W_dec row, feature)|, as upstream's MCC); -1 for features left unmatched when
    ``d_sae < num_features``."""
    features, latents, _ = _matching(sae, feature_vectors)
    matched = torch.full((feature_vectors.shape[0],), -1, dtype=torch.long)
    matched[features] = latents
    return matched


def matched_cosines(sae: Any, feature_vectors: torch.Tensor) -> torch.Tensor:
    """``(num_features,)`` |cos| between each true feature and its matched decoder row (NaN
    for a feature left unmatched when ``d_sae < num_features``); the mean over matched
    features is upstream's MCC, their mean over a subset is that subset's MCC."""
    features, _, cosines = _matching(sae, feature_vectors)
    out = torch.full((feature_vectors.shape[0],), float("nan"))
    out[features] = cosines
    return out


def _matching(
    sae: Any, feature_vectors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Hungarian matching as ``(features, latents, |cos|)`` of its ``min(num_features,
    d_sae)`` pairs (upstream's MCC averages exactly these)."""
    from scipy.optimize import linear_sum_assignment

    w = sae.W_dec.detach().float().cpu()
    f = feature_vectors.detach().float().cpu()
    cos = (f / f.norm(dim=-1, keepdim=True)) @ (w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)).T
    rows, cols = linear_sum_assignment(-cos.abs().numpy())
    features = torch.as_tensor(rows, dtype=torch.long)
    latents = torch.as_tensor(cols, dtype=torch.long)
    return features, latents, cos.abs()[features, latents]


def inference_sae(sae: Any) -> Any:
    """The SAE as it is used after saving: a BatchTopK-family training SAE (batch-dependent
    top-k, upstream ``batchtopk``/``matryoshka_batchtopk``/``tsae``) becomes the inference SAE
    its save writes (JumpReLU at the learned threshold); any other SAE is returned as is."""
    from sae_lens import SAE
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE

    if not isinstance(sae, BatchTopKTrainingSAE):
        return sae
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    sae.process_state_dict_for_saving_inference(state)
    out: SAE[Any] = SAE.from_dict(sae.cfg.get_inference_sae_cfg_dict())
    out.load_state_dict(state)
    return out.to(sae.device).eval()


def _reconstruct(sae: Any, latents: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    flat = latents.reshape(-1, latents.shape[-1])
    was_training = sae.training
    sae.eval()
    try:
        return torch.cat(
            [
                sae.decode(flat[i : i + batch_size].to(sae.device)).float().cpu()
                for i in range(0, flat.shape[0], batch_size)
            ]
        )
    finally:
        sae.train(was_training)


def _ground_truth_metrics(
    sae: Any, sequences: Any, acf: torch.Tensor, max_lag: int
) -> dict[str, float]:
    """MCC and autocorrelation error, overall and (when the data say which features are
    persistent) on persistent and transient features separately."""
    features, latents, cosines = _matching(sae, sequences.feature_vectors)
    true_acf = autocorrelation(sequences.feature_acts, max_lag)
    error = (acf[latents] - true_acf[features]).abs().mean(-1)
    out = {
        "mcc": float(cosines.mean()),
        "autocorr_error": float(error.mean()),
        "true_mean_autocorrelation": float(true_acf.mean()),
    }
    persistent = getattr(sequences, "is_persistent", None)
    if persistent is not None:
        persistent = persistent[features]  # the matched features (all when d_sae >= them)
        for name, subset in (("persistent", persistent), ("transient", ~persistent)):
            if subset.any():
                out[f"mcc_{name}"] = float(cosines[subset].mean())
                out[f"autocorr_error_{name}"] = float(error[subset].mean())
    return out


@torch.no_grad()
def evaluate_on_sequences(
    sae: Any,
    sequences: Sequences,
    max_lag: int = 1,
    redundancy_threshold: float = 0.9,
) -> dict[str, float]:
    """Reconstruction, sparsity and consistency of ``sae`` (as :func:`inference_sae` gives
    it) on sequences; with ground truth (a :class:`~.data.SyntheticSequences`) also MCC and
    the autocorrelation error ``mean_i |acf_latent(match(i)) - acf_true(i)|`` at lag
    1..max_lag (mean over lags), split into persistent and transient features when the
    data have both (``mcc_persistent``, ``autocorr_error_transient``...)."""
    sae = inference_sae(sae)
    acts = _as_tensor(sequences)
    latents = encode_sequences(sae, acts)
    flat_x = acts.reshape(-1, acts.shape[-1]).float()
    recon = _reconstruct(sae, latents)
    err = (recon - flat_x).pow(2).sum(-1)
    flat_f = latents.reshape(-1, latents.shape[-1])
    acf = autocorrelation(latents, max_lag)
    alive = alive_latents(latents)
    from sae_lens_ext.api import explained_variance

    out: dict[str, float] = {
        "explained_variance": explained_variance(flat_x, recon),
        "mse": float(err.mean()),
        "cossim": float(torch.nn.functional.cosine_similarity(recon, flat_x, dim=-1).mean()),
        "l0": float((flat_f != 0).float().sum(-1).mean()),
        "l1": float(flat_f.abs().sum(-1).mean()),
        "dead_latents": int((~alive).sum()),
        "mean_autocorrelation": float(acf[alive].mean()) if alive.any() else 0.0,
        "redundant_pairs": len(redundant_pairs_blockwise(latents, redundancy_threshold)),
    }
    if hasattr(sequences, "feature_acts"):
        out.update(_ground_truth_metrics(sae, sequences, acf, max_lag))
    return out


@torch.no_grad()
def sequence_metrics(sae: Any, data: Any, redundancy_threshold: float = 0.9) -> list[Any]:
    """The ``evaluation_metrics`` rows of this plugin for ``data`` (an ``EvalData`` of
    sequences): mean lag-1 autocorrelation of alive latents, redundant pairs and, with
    ground truth, the lag-1 autocorrelation error of the latents matched to true features."""
    from sae_lens_ext.api import Metric

    latents = encode_sequences(sae, data.activations)
    acf = autocorrelation(latents, 1)
    alive = alive_latents(latents)
    metrics = [
        Metric(
            "mean_autocorrelation",
            float(acf[alive].mean()) if alive.any() else 0.0,
            "latent lag-1 autocorrelation (mean over alive latents)",
        ),
        Metric(
            "redundant_pairs",
            len(redundant_pairs_blockwise(latents, redundancy_threshold)),
            f"redundant latent pairs (activation correlation > {redundancy_threshold})",
            "{}",
        ),
    ]
    if data.feature_acts is not None and data.feature_vectors is not None:
        matched = match_latents(sae, data.feature_vectors)
        true_acf = autocorrelation(data.feature_acts, 1)
        metrics += [
            Metric(
                "true_mean_autocorrelation",
                float(true_acf.mean()),
                "true features' lag-1 autocorrelation (mean)",
            ),
            Metric(
                "autocorr_error",
                float((acf[matched] - true_acf).abs().mean()),
                "autocorrelation error of matched latents vs ground truth",
            ),
        ]
    return metrics
