"""Consistency metrics of a trained SAE on sequence activations ``(n_seq, seq_len, d_in)``.

All statistics pool every sequence and position: for latent ``i``, mean ``mu_i`` and
variance ``var_i`` over all rows; the lag-k autocorrelation is
``mean_{s, t}((a_{s,t} - mu)(a_{s,t+k} - mu)) / var`` over pairs inside a sequence.
Latents that never vary (dead, or constant) get autocorrelation and correlation 0 and are
left out of means and clusters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

Sequences = Any  # a (n_seq, seq_len, d_in) tensor or an object with ``.activations``


def _as_tensor(sequences: Sequences) -> torch.Tensor:
    acts = getattr(sequences, "activations", sequences)
    if not isinstance(acts, torch.Tensor) or acts.dim() != 3:
        raise ValueError("sequences must be a (n_seq, seq_len, d_in) tensor")
    return acts


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


def _centred(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = latents.double()
    mu = x.mean(dim=(0, 1))
    xc = x - mu
    var = xc.pow(2).mean(dim=(0, 1))
    return xc, var


def autocorrelation(latents: torch.Tensor, max_lag: int = 1) -> torch.Tensor:
    """``(n_latents, max_lag)`` pooled lag-1..K autocorrelation of ``(n_seq, seq_len, n)`` values."""
    if latents.dim() != 3:
        raise ValueError("latents must be (n_seq, seq_len, n_latents)")
    if not 1 <= max_lag < latents.shape[1]:
        raise ValueError(f"max_lag must be in [1, seq_len - 1], got {max_lag}")
    xc, var = _centred(latents)
    alive = var > 1e-12
    out = torch.zeros(latents.shape[-1], max_lag, dtype=torch.float64)
    for k in range(1, max_lag + 1):
        cov = (xc[:, :-k] * xc[:, k:]).mean(dim=(0, 1))
        out[:, k - 1] = torch.where(alive, cov / var.clamp_min(1e-12), torch.zeros_like(cov))
    return out.float()


def lag_autocorrelation(sae: Any, sequences: Sequences, max_lag: int = 1) -> torch.Tensor:
    """``Tensor[d_sae, max_lag]``: lag-k autocorrelation of each latent across positions."""
    return autocorrelation(encode_sequences(sae, sequences), max_lag)


def mean_lag_autocorrelation(sae: Any, sequences: Sequences, max_lag: int = 1) -> torch.Tensor:
    """``Tensor[max_lag]``: mean over alive latents of :func:`lag_autocorrelation`."""
    latents = encode_sequences(sae, sequences)
    acf = autocorrelation(latents, max_lag)
    alive = latents.reshape(-1, latents.shape[-1]).std(0) > 0
    return acf[alive].mean(0) if alive.any() else torch.zeros(max_lag)


def correlation_matrix(latents: torch.Tensor, lag: int = 0) -> torch.Tensor:
    """``(n, n)`` Pearson correlation of latent ``i`` at ``t`` with latent ``j`` at ``t + lag``."""
    xc, var = _centred(latents)
    if lag:
        a, b = xc[:, :-lag], xc[:, lag:]
    else:
        a = b = xc
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    cov = a.T @ b / a.shape[0]
    std = var.sqrt()
    denom = std[:, None] * std[None, :]
    corr = torch.where(denom > 1e-12, cov / denom.clamp_min(1e-12), torch.zeros_like(cov))
    return corr.float()


def feature_correlation(sae: Any, sequences: Sequences, lag: int = 0) -> torch.Tensor:
    """``Tensor[d_sae, d_sae]``: correlation of latent activations across all positions
    (``lag > 0``: latent ``i`` at ``t`` against latent ``j`` at ``t + lag``)."""
    return correlation_matrix(encode_sequences(sae, sequences), lag)


def redundant_pairs(
    sae_or_correlation: Any,
    sequences: Sequences | None = None,
    threshold: float = 0.9,
    lag: int = 0,
) -> list[tuple[int, int, float]]:
    """Latent pairs ``(i, j, corr)``, ``i < j``, whose correlation is >= ``threshold``,
    strongest first. Pass an SAE and sequences, or a correlation matrix."""
    if isinstance(sae_or_correlation, torch.Tensor):
        corr = sae_or_correlation
    else:
        if sequences is None:
            raise ValueError("redundant_pairs: give sequences with an SAE")
        corr = feature_correlation(sae_or_correlation, sequences, lag)
    sym = torch.maximum(corr, corr.T).triu(diagonal=1)
    idx = (sym >= threshold).nonzero()
    pairs = [(int(i), int(j), float(sym[i, j])) for i, j in idx]
    return sorted(pairs, key=lambda p: -p[2])


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
    alive = (flat != 0).any(0) & (flat.std(0) > 0)
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
    |cos(W_dec row, feature)|, as upstream's MCC); needs ``d_sae >= num_features``."""
    from scipy.optimize import linear_sum_assignment

    w = sae.W_dec.detach().float().cpu()
    f = feature_vectors.detach().float().cpu()
    cos = (f / f.norm(dim=-1, keepdim=True)) @ (w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)).T
    rows, cols = linear_sum_assignment(-cos.abs().numpy())
    out = torch.empty(f.shape[0], dtype=torch.long)
    out[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return out


@torch.no_grad()
def evaluate_on_sequences(
    sae: Any,
    sequences: Sequences,
    max_lag: int = 1,
    redundancy_threshold: float = 0.9,
) -> dict[str, float]:
    """Reconstruction, sparsity and consistency of ``sae`` on sequences; with ground truth
    (a :class:`~.data.SyntheticSequences`) also MCC and the autocorrelation error
    ``mean_i |acf_latent(match(i)) - acf_true(i)|`` at lag 1..max_lag (mean over lags)."""
    acts = _as_tensor(sequences)
    latents = encode_sequences(sae, acts)
    flat_x = acts.reshape(-1, acts.shape[-1]).float()
    was_training = sae.training
    sae.eval()
    try:
        recon = torch.cat(
            [
                sae.decode(latents.reshape(-1, latents.shape[-1])[i : i + 8192].to(sae.device))
                .float()
                .cpu()
                for i in range(0, flat_x.shape[0], 8192)
            ]
        )
    finally:
        sae.train(was_training)
    err = (recon - flat_x).pow(2).sum(-1)
    flat_f = latents.reshape(-1, latents.shape[-1])
    acf = autocorrelation(latents, max_lag)
    alive = flat_f.std(0) > 0
    corr = correlation_matrix(latents)
    from sae_lens_ext.metrics import explained_variance

    out: dict[str, float] = {
        "explained_variance": explained_variance(flat_x, recon),
        "mse": float(err.mean()),
        "cossim": float(torch.nn.functional.cosine_similarity(recon, flat_x, dim=-1).mean()),
        "l0": float((flat_f != 0).float().sum(-1).mean()),
        "l1": float(flat_f.abs().sum(-1).mean()),
        "dead_latents": int((~(flat_f != 0).any(0)).sum()),
        "mean_autocorrelation": float(acf[alive].mean()) if alive.any() else 0.0,
        "redundant_pairs": len(redundant_pairs(corr, threshold=redundancy_threshold)),
    }
    if hasattr(sequences, "feature_acts"):
        from sae_lens.synthetic.evals import mean_correlation_coefficient

        gt = sequences.feature_vectors
        matched = match_latents(sae, gt)
        true_acf = autocorrelation(sequences.feature_acts, max_lag)
        out["mcc"] = mean_correlation_coefficient(sae.W_dec.detach().float().cpu(), gt.float())
        out["autocorr_error"] = float((acf[matched] - true_acf).abs().mean())
        out["true_mean_autocorrelation"] = float(true_acf.mean())
    return out


@torch.no_grad()
def sequence_metrics(sae: Any, data: Any, redundancy_threshold: float = 0.9) -> list[Any]:
    """The ``evaluation_metrics`` rows of this plugin for ``data`` (an ``EvalData`` of
    sequences): mean lag-1 autocorrelation of alive latents, redundant pairs and, with
    ground truth, the lag-1 autocorrelation error of the latents matched to true features."""
    from sae_lens_ext.metrics import Metric

    latents = encode_sequences(sae, data.activations)
    acf = autocorrelation(latents, 1)
    alive = latents.reshape(-1, latents.shape[-1]).std(0) > 0
    metrics = [
        Metric(
            "mean_autocorrelation",
            float(acf[alive].mean()) if alive.any() else 0.0,
            "latent lag-1 autocorrelation (mean over alive latents)",
        ),
        Metric(
            "redundant_pairs",
            len(redundant_pairs(correlation_matrix(latents), threshold=redundancy_threshold)),
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
