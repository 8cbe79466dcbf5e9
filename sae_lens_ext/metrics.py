"""Metrics every architecture gets, and the types plugins use to add their own.

:class:`EvalData` is what an SAE is evaluated on (activations, with ground truth when
known); :func:`generic_metrics` computes reconstruction, sparsity and (with ground truth)
SAE-Lens's synthetic-data metrics with SAE-Lens's own calculators; plugins add
:class:`Metric` rows through the ``evaluation_metrics`` hook. Heavy (torch): import it
inside command bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

#: Dead latents are counted over this many evaluation samples (a fixed window, so the
#: count does not move with ``--eval-samples``): a latent is dead if it fires on none.
DEAD_WINDOW = 100_000


@dataclass(frozen=True)
class Metric:
    """One reported quantity: its ``metrics.json`` key, value and table row.

    ``value`` is a number, or any JSON-able object (written to ``metrics.json`` but
    not shown in tables). ``label`` is the table's wording (default: the key);
    ``fmt`` formats the value; ``show=False`` keeps a number out of tables and plots
    (e.g. the size of a window a metric was computed over).
    """

    key: str
    value: Any
    label: str = ""
    fmt: str = "{:.3f}"
    show: bool = True

    def row(self) -> tuple[str, str] | None:
        """``(label, formatted value)``, or ``None`` for a value not shown in tables."""
        if not self.show or isinstance(self.value, bool):
            return None
        if not isinstance(self.value, (int, float)):
            return None
        return self.label or self.key, self.fmt.format(self.value)


@dataclass
class EvalData:
    """Activations to evaluate an SAE on, with ground truth when it is known.

    Attributes:
        activations: ``(n, d_in)`` rows, or ``(n_seq, seq_len, d_in)`` sequences (sequence
            metrics such as lag autocorrelation need the latter).
        feature_vectors: ``(n_features, d_in)`` true feature directions, if known.
        feature_acts: true feature activations, ``activations.shape[:-1] + (n_features,)``.
        description: what the data are (shown in tables).
    """

    activations: torch.Tensor
    feature_vectors: torch.Tensor | None = None
    feature_acts: torch.Tensor | None = None
    description: str = ""
    _memo: dict[tuple[int, str], Any] = field(default_factory=dict, repr=False)

    @property
    def is_sequences(self) -> bool:
        return self.activations.dim() == 3

    @property
    def n_rows(self) -> int:
        return int(self.activations.shape[:-1].numel())

    def rows(self) -> torch.Tensor:
        """``(n, d_in)``: every position as a row (sequence order kept)."""
        return self.activations.reshape(-1, self.activations.shape[-1])

    def firing_frequencies(self, sae: Any) -> torch.Tensor:
        """:func:`firing_frequencies` of ``sae`` on these data (computed once per SAE)."""
        key = (id(sae), "frequencies")
        if key not in self._memo:
            self._memo[key] = firing_frequencies(sae, self.activations)
        return self._memo[key]


@torch.no_grad()
def firing_frequencies(sae: Any, activations: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """``[d_sae]``: the fraction of positions of ``activations`` (rows ``(N, d_in)`` or
    sequences ``(n_seq, seq_len, d_in)``) on which each latent of ``sae`` is non-zero,
    encoded in eval mode about ``batch_size`` rows at a time (:func:`encode_batches`)."""
    counts, n = torch.zeros(sae.cfg.d_sae, dtype=torch.float64), 0
    for _, latents in encode_batches(sae, EvalData(activations), batch_size):
        counts += (latents != 0).sum(0, dtype=torch.float64).cpu()
        n += latents.shape[0]
    if n == 0:
        raise ValueError("firing_frequencies: activations is empty")
    return (counts / n).float()


def batch_rows_for(sae: Any, rows: int = 4096) -> int:
    """A batch size near ``rows`` holding whole windows of the SAE's batch window."""
    from sae_lens_ext.data.windows import batch_window

    window = batch_window(sae.cfg)
    return max(window, rows - rows % window)


@torch.no_grad()
def encode_batches(
    sae: Any, data: EvalData, rows: int = 4096
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, latents)`` row batches of ``data`` (eval mode, on the SAE's device).

    Sequences are encoded a whole number of sequences at a time, rows a whole number of
    the SAE's batch windows at a time, so window architectures see consecutive positions.
    """
    was_training = sae.training
    sae.eval()
    try:
        acts = data.activations
        step = max(1, rows // acts.shape[1]) if data.is_sequences else batch_rows_for(sae, rows)
        for start in range(0, acts.shape[0], step):
            x = acts[start : start + step].to(sae.device, sae.dtype)
            latents = sae.encode(x)
            yield x.reshape(-1, x.shape[-1]), latents.reshape(-1, latents.shape[-1])
    finally:
        sae.train(was_training)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``1 - E||x - x_hat||^2 / Var(x)`` with SAE-Lens's ``ExplainedVarianceCalculator``
    (total variance around the mean, summed over dimensions): the one definition used
    for every explained variance this package reports."""
    from sae_lens.evals import ExplainedVarianceCalculator

    calc = ExplainedVarianceCalculator()
    calc.add_batch(x_hat.reshape(x.shape), x)
    return calc.compute()


@torch.no_grad()
def generic_metrics(sae: Any, data: EvalData) -> list[Metric]:
    """Reconstruction and sparsity of any SAE-Lens SAE on ``data``; with ground truth
    also SAE-Lens's synthetic-data metrics (MCC, uniqueness, shrinkage, classification).

    Uses SAE-Lens's calculators (``sae_lens.evals``, ``sae_lens.synthetic.evals``), so the
    figures mean what they mean upstream.
    """
    from sae_lens.evals import ExplainedVarianceCalculator
    from sae_lens.synthetic.evals import (
        DeadLatentsCalculator,
        L0Calculator,
        ShrinkageCalculator,
    )

    ev, l0, shrink = ExplainedVarianceCalculator(), L0Calculator(), ShrinkageCalculator()
    dead = DeadLatentsCalculator(sae.cfg.d_sae)
    cos_sum, seen = 0.0, 0
    for x, latents in encode_batches(sae, data):
        x_hat = sae.decode(latents).reshape(x.shape).float()
        x = x.float()
        ev.add_batch(x_hat, x)
        l0.add_batch(latents)
        shrink.add_batch(x_hat, x)
        if seen < DEAD_WINDOW:
            dead.add_batch(latents[: DEAD_WINDOW - seen])
        seen += x.shape[0]
        cos_sum += torch.nn.functional.cosine_similarity(x_hat, x, dim=-1).sum().item()
    window = min(seen, DEAD_WINDOW)
    metrics = [
        Metric("explained_variance", ev.compute(), "explained variance"),
        Metric("cossim", cos_sum / max(seen, 1), "cosine similarity (input, reconstruction)"),
        Metric("l0", l0.compute(), "L0 (mean active latents per sample)", "{:.1f}"),
        Metric(
            "dead_latents",
            dead.compute(),
            f"dead latents (fire on none of {window:,} samples)",
            "{}",
        ),
        Metric("dead_window", window, show=False),
        Metric("shrinkage", shrink.compute(), "shrinkage (||x_hat|| / ||x||)"),
    ]
    if data.feature_vectors is not None:
        metrics += ground_truth_metrics(sae, data)
    return metrics


@torch.no_grad()
def ground_truth_metrics(sae: Any, data: EvalData) -> list[Metric]:
    """SAE-Lens's ground-truth metrics: MCC and uniqueness of the decoder against the true
    features, true L0, and latents as detectors of their best-matching feature."""
    from sae_lens.synthetic.evals import (
        ClassificationMetricsCalculator,
        L0Calculator,
        feature_uniqueness,
        mean_correlation_coefficient,
    )

    assert data.feature_vectors is not None
    decoder = sae.W_dec.detach().float().cpu()
    truth = data.feature_vectors.detach().float().cpu()
    metrics = [
        Metric("mcc", mean_correlation_coefficient(decoder, truth), "ground-truth MCC"),
        Metric(
            "uniqueness",
            feature_uniqueness(decoder, truth),
            "uniqueness (latents tracking distinct features)",
        ),
    ]
    if data.feature_acts is None:
        return metrics
    true_acts = data.feature_acts.reshape(-1, data.feature_acts.shape[-1])
    true_l0 = L0Calculator()
    classify = ClassificationMetricsCalculator(decoder, truth)
    start = 0
    for _, latents in encode_batches(sae, data):
        rows = true_acts[start : start + latents.shape[0]]
        true_l0.add_batch(rows)
        classify.add_batch(latents.float().cpu(), rows.float().cpu())
        start += latents.shape[0]
    scores = classify.compute()
    return [
        *metrics,
        Metric("true_l0", true_l0.compute(), "true L0 (active features per sample)", "{:.1f}"),
        Metric("classification_f1", scores.f1_score, "latents as feature detectors: F1"),
        Metric(
            "classification",
            {k: getattr(scores, k) for k in ("precision", "recall", "f1_score", "accuracy")},
        ),
    ]


def metrics_dict(metrics: list[Metric]) -> dict[str, Any]:
    """``{key: value}`` for ``metrics.json``; a key given twice is an error."""
    out: dict[str, Any] = {}
    for metric in metrics:
        if metric.key in out:
            raise ValueError(f"metric {metric.key!r} is reported twice")
        out[metric.key] = metric.value
    return out


#: Above this many latents (in either SAE) :func:`seed_consistency` refuses to build the
#: dense cosine matrix (8 bytes per pair: 2 GiB at 16k x 16k, 8 GiB at 32k x 32k).
MAX_CONSISTENCY_LATENTS = 32_768


@torch.no_grad()
def seed_consistency(
    sae_a: Any,
    sae_b: Any,
    threshold: float = 0.9,
    max_latents: int = MAX_CONSISTENCY_LATENTS,
) -> dict[str, Any]:
    """How alike the dictionaries of two SAEs are (e.g. one variant trained with two seeds).

    Latents are matched one to one by the cosine similarity of their decoder rows
    (signed: a latent and its negation are different features), maximising the total
    cosine with the Hungarian algorithm (scipy's ``linear_sum_assignment``). Every latent
    counts, dead ones included; with different ``d_sae`` the smaller dictionary is
    matched in full. Works for any two SAE-Lens SAEs with the same ``d_in``.

    Returns ``mean_matched_cosine``, ``share_above`` (share of matched pairs whose cosine
    exceeds ``threshold``), ``threshold``, ``matched`` (number of pairs) and
    ``index_spearman``: Spearman's correlation of the matched latents' indices (1: each
    latent is found again at the same place in the order, as an ordered dictionary should
    be; near 0: the order is arbitrary).

    Memory: one dense ``d_sae_a x d_sae_b`` float64 matrix (the precision scipy solves
    in; it is negated in place, so scipy copies nothing): 2 GiB at 16k latents. Above
    ``max_latents`` latents the function refuses rather than exhaust memory.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.stats import spearmanr

    a, b = sae_a.W_dec.detach(), sae_b.W_dec.detach()
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"seed_consistency: d_in differs ({a.shape[-1]} vs {b.shape[-1]})")
    if max(a.shape[0], b.shape[0]) > max_latents:
        gib = 8 * a.shape[0] * b.shape[0] / 2**30
        raise ValueError(
            f"seed_consistency: {a.shape[0]} x {b.shape[0]} latents need a {gib:.0f} GiB "
            f"cosine matrix; raise max_latents (now {max_latents}) if the machine has it"
        )
    a = torch.nn.functional.normalize(a.cpu().double(), dim=-1)
    b = torch.nn.functional.normalize(b.cpu().double(), dim=-1)
    cost = (a @ b.T).numpy()
    cost *= -1.0  # maximise the cosine: minimise its negation, in place
    rows, cols = linear_sum_assignment(cost)
    matched = -torch.from_numpy(cost[rows, cols])
    return {
        "mean_matched_cosine": float(matched.mean()),
        "share_above": float((matched > threshold).double().mean()),
        "threshold": threshold,
        "matched": int(matched.numel()),
        "index_spearman": float(spearmanr(rows, cols).statistic) if len(rows) > 1 else 1.0,
    }
