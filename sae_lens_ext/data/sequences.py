"""Synthetic sequences whose features persist over positions, with ground truth.

Demo data for any architecture that trains on windows of consecutive positions:

- :class:`SyntheticSequences`: each feature a sticky on/off Markov chain with its own
  persistence, built on upstream's :class:`~sae_lens.synthetic.FeatureDictionary`, so
  ground-truth feature activations and autocorrelations are known; its batches are whole
  windows, shuffled (:class:`sae_lens_ext.data.windows.WindowShuffledBatches`);
- :class:`SequenceDemoData`: those sequences as ``sae-lens demo`` data (a plugin's
  ``demo_setup`` names it), with held-out sequences for the metrics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from sae_lens_ext.data.synthetic import DemoData, DemoDataOptions
from sae_lens_ext.data.windows import WindowShuffledBatches
from sae_lens_ext.metrics import EvalData

if TYPE_CHECKING:
    from sae_lens_ext.browse.data import BrowserData

#: A latent whose float64 variance over the evaluated positions is at most this is constant
#: there: it has no autocorrelation (the alive rule of every statistic over positions).
ALIVE_VAR_EPS = 1e-12


@dataclass
class SyntheticSequenceConfig:
    """Synthetic sequences whose features persist over positions.

    Args:
        num_features: ground-truth features.
        d_in: hidden dimension (``num_features > d_in`` puts features in superposition).
        seq_len, n_sequences: shape of the data.
        firing_probability: stationary probability that a feature is on, either one value or
            a ``(low, high)`` range spread log-uniformly over features.
        persistence: ``(low, high)`` range of each feature's probability of staying on
            (spread linearly over features, then shuffled); higher = longer runs.
        magnitude_mean, magnitude_std: magnitude drawn when a feature turns on (held for the
            run), folded to be > 0.
        magnitude_jitter: relative per-position jitter of the held magnitude.
        noise_std: isotropic Gaussian noise added to the hidden activations.
        transient_fraction: share of features that are *transient*: on or off independently
            at every position (persistence = firing probability, so lag-k autocorrelation 0);
            the others are *persistent* (persistence from ``persistence``). Which is which:
            ``SyntheticSequences.is_persistent``. 0 (default): all persistent.
        orthogonalize: orthogonalise the dictionary as far as ``d_in`` allows (upstream
            initializer; costs a short optimisation).
        seed: seed of everything.
    """

    num_features: int = 64
    d_in: int = 32
    seq_len: int = 64
    n_sequences: int = 256
    firing_probability: float | tuple[float, float] = (0.02, 0.12)
    persistence: tuple[float, float] = (0.5, 0.95)
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.25
    magnitude_jitter: float = 0.1
    noise_std: float = 0.05
    orthogonalize: bool = True
    seed: int = 0
    transient_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_features", "d_in", "seq_len", "n_sequences"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SyntheticSequenceConfig.{name} must be > 0")
        lo, hi = self.persistence
        if not 0 <= lo <= hi < 1:
            raise ValueError(
                f"persistence must satisfy 0 <= low <= high < 1, got {self.persistence}"
            )
        p_lo, p_hi = self._firing_range()
        if not 0 < p_lo <= p_hi < 1:
            raise ValueError(f"firing_probability must be in (0, 1), got {self.firing_probability}")
        if not 0 <= self.transient_fraction <= 1:
            raise ValueError(f"transient_fraction must be in [0, 1], got {self.transient_fraction}")

    def _firing_range(self) -> tuple[float, float]:
        p = self.firing_probability
        return (float(p), float(p)) if isinstance(p, (int, float)) else (float(p[0]), float(p[1]))


class SyntheticSequences:
    """Sequences ``(n_seq, seq_len, d_in)`` from sticky Markov features and a ``FeatureDictionary``.

    Feature ``i`` is on/off by a two-state Markov chain started from its stationary law:
    ``P(on -> on) = rho_i`` (its persistence) and ``P(off -> on) = a_i`` chosen so that it is
    on a fraction ``p_i`` of positions. While on it has a magnitude drawn at switch-on and
    held (with small jitter). ``activations = feature_acts @ feature_vectors + noise``.

    Transient features (``cfg.transient_fraction``) have ``rho_i = p_i``: the chain forgets
    its state at every position, so they are independent across positions.

    Attributes:
        feature_dict: the upstream ``FeatureDictionary`` (ground-truth directions).
        is_persistent: ``(num_features,)`` bool, False for the transient features.
        feature_acts: ``(n_seq, seq_len, num_features)`` true activations.
        activations: ``(n_seq, seq_len, d_in)`` hidden activations (float32).
        persistence, firing_probability: per-feature chain parameters.

    Pass ``features_from=train`` (and a different ``seed``) to draw held-out sequences with
    the same features: the same directions *and* the same per-feature persistence, firing
    probability and persistent/transient split. ``feature_dict`` alone shares only the
    directions (each seed then draws its own chain parameters).
    """

    feature_dict: Any
    is_persistent: torch.Tensor
    persistence: torch.Tensor
    switch_on: torch.Tensor

    def __init__(
        self,
        cfg: SyntheticSequenceConfig,
        feature_dict: Any | None = None,
        features_from: SyntheticSequences | None = None,
    ) -> None:
        from sae_lens.synthetic import FeatureDictionary
        from sae_lens.synthetic.feature_dictionary import orthogonal_initializer

        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        if features_from is not None:
            feature_dict = features_from.feature_dict
        if feature_dict is None:
            feature_dict = FeatureDictionary(
                cfg.num_features,
                cfg.d_in,
                initializer=orthogonal_initializer(num_steps=100) if cfg.orthogonalize else None,
                seed=cfg.seed,
            )
        elif feature_dict.feature_vectors.shape != (cfg.num_features, cfg.d_in):
            raise ValueError("feature_dict does not match num_features x d_in")
        self.feature_dict = feature_dict.requires_grad_(False)
        if features_from is not None:
            self.is_persistent = features_from.is_persistent
            rho, a = features_from.persistence, features_from.switch_on
        else:
            rho, a = self._chain_parameters(g)
        self.persistence, self.switch_on, self.firing_probability = rho, a, a / (a + 1 - rho)
        self.feature_acts = self._sample(cfg.n_sequences, cfg.seq_len, g)
        n = cfg.num_features
        with torch.no_grad():
            x = self.feature_dict(self.feature_acts.reshape(-1, n)).reshape(
                cfg.n_sequences, cfg.seq_len, cfg.d_in
            )
        if cfg.noise_std > 0:
            x = x + cfg.noise_std * torch.randn(x.shape, generator=g)
        self.activations = x.float().contiguous()

    def _chain_parameters(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature ``(rho, a)``: P(on -> on) and P(off -> on); sets ``is_persistent``."""
        cfg, n = self.cfg, self.cfg.num_features
        lo, hi = cfg.persistence
        rho = torch.linspace(lo, hi, n)[torch.randperm(n, generator=g)]
        p_lo, p_hi = cfg._firing_range()
        p = torch.exp(torch.empty(n).uniform_(math.log(p_lo), math.log(p_hi), generator=g))
        self.is_persistent = self._persistent_mask()
        rho = torch.where(self.is_persistent, rho, p)  # transient: rho = p, so a = p
        # stationary law p = a / (a + 1 - rho)  =>  a = p (1 - rho) / (1 - p)
        return rho, (p * (1 - rho) / (1 - p)).clamp(max=1.0)

    def _persistent_mask(self) -> torch.Tensor:
        """Which features persist; drawn from its own generator so that configs without
        transient features give exactly the data they always gave."""
        n = self.cfg.num_features
        mask = torch.ones(n, dtype=torch.bool)
        n_transient = round(self.cfg.transient_fraction * n)
        if n_transient:
            g = torch.Generator().manual_seed(self.cfg.seed + 7919)
            mask[torch.randperm(n, generator=g)[:n_transient]] = False
        return mask

    def _sample(self, n_seq: int, seq_len: int, g: torch.Generator) -> torch.Tensor:
        cfg, n = self.cfg, self.cfg.num_features

        def magnitudes() -> torch.Tensor:
            m = cfg.magnitude_mean + cfg.magnitude_std * torch.randn(n_seq, n, generator=g)
            return m.abs().clamp_min(1e-3)

        on = torch.rand(n_seq, n, generator=g) < self.firing_probability
        mag = magnitudes()
        out = torch.empty(n_seq, seq_len, n)
        for t in range(seq_len):
            if t:
                u = torch.rand(n_seq, n, generator=g)
                switched_on = ~on & (u < self.switch_on)
                on = torch.where(on, u < self.persistence, switched_on)
                mag = torch.where(switched_on, magnitudes(), mag)
            jitter = 1 + cfg.magnitude_jitter * torch.randn(n_seq, n, generator=g)
            out[:, t] = on * (mag * jitter).clamp_min(0)
        return out

    @property
    def feature_vectors(self) -> torch.Tensor:
        """``(num_features, d_in)`` ground-truth directions."""
        return self.feature_dict.feature_vectors.detach()

    def binary_autocorrelation(self, max_lag: int = 1) -> torch.Tensor:
        """``(num_features, max_lag)`` analytic lag-k autocorrelation of the on/off chains,
        ``(rho - a)^k`` (the magnitudes lower the activations' value somewhat)."""
        lam = self.persistence - self.switch_on
        return torch.stack([lam**k for k in range(1, max_lag + 1)], dim=-1)

    def batches(self, window: int, batch_size: int, seed: int = 0) -> WindowShuffledBatches:
        """A :class:`WindowShuffledBatches` over these sequences."""
        return WindowShuffledBatches(self.activations, window, batch_size, seed)


SEQ_LEN = 64
CONFIG_FILE = "sequence_config.json"
FEATURES_FILE = "feature_vectors.pt"


class SequenceDemoData(DemoData):
    """Training sequences (about four epochs of the run) and held-out sequences drawn from
    the same feature dictionary, with the true activations for the metrics."""

    def __init__(self, sequences: SyntheticSequences) -> None:
        self.sequences = sequences
        cfg = sequences.cfg
        self.description = (
            f"synthetic sequences: {cfg.num_features} sticky-Markov features in {cfg.d_in} "
            f"dimensions, {cfg.seq_len} positions"
        )

    @classmethod
    def create(cls, options: DemoDataOptions) -> SequenceDemoData:
        n_sequences = max(64, min(1024, math.ceil(options.samples / SEQ_LEN / 4)))
        cfg = SyntheticSequenceConfig(
            num_features=options.n_features,
            d_in=options.d_in,
            seq_len=SEQ_LEN,
            n_sequences=n_sequences,
            seed=options.seed,
        )
        return cls(SyntheticSequences(cfg))

    @override
    def training_batches(self, batch_size: int, window: int, seed: int) -> Iterator[torch.Tensor]:
        return self.sequences.batches(window, batch_size, seed)

    @override
    def eval_data(self, n_samples: int, seed: int) -> EvalData:
        cfg = self.sequences.cfg
        held_out_cfg = SyntheticSequenceConfig(
            **{
                **asdict(cfg),
                "n_sequences": max(1, math.ceil(n_samples / cfg.seq_len)),
                "seed": seed,
            }
        )
        # same directions and the same per-feature chains as the training sequences
        held_out = SyntheticSequences(held_out_cfg, features_from=self.sequences)
        return EvalData(
            activations=held_out.activations,
            feature_vectors=held_out.feature_vectors,
            feature_acts=held_out.feature_acts,
            description=self.description,
        )

    @override
    def save_files(self, folder: Path) -> None:
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.sequences.cfg)) + "\n")
        torch.save(self.sequences.feature_dict.state_dict(), folder / FEATURES_FILE)

    @override
    @classmethod
    def load_files(cls, folder: Path) -> SequenceDemoData:
        from sae_lens.synthetic import FeatureDictionary

        raw = json.loads((folder / CONFIG_FILE).read_text())
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        cfg = SyntheticSequenceConfig(**values)
        feature_dict = FeatureDictionary(cfg.num_features, cfg.d_in, seed=cfg.seed)
        feature_dict.load_state_dict(torch.load(folder / FEATURES_FILE, weights_only=True))
        return cls(SyntheticSequences(cfg, feature_dict=feature_dict))


def lag1_autocorrelation(data: BrowserData, latents: list[int] | None = None) -> torch.Tensor:
    """``(n,)`` lag-1 autocorrelation of ``latents`` (default: the browsed ones) on the
    sample, NaN for a latent that does not vary there. Streaming float64 moments: memory
    one batch of contexts."""
    n = len(data.latents if latents is None else latents)
    s1, s2, sa, sb, s12 = (torch.zeros(n, dtype=torch.float64) for _ in range(5))
    rows = pairs = 0
    for acts in data.sample_latents(latents):
        x = acts.double()
        s1 += x.sum((0, 1))
        s2 += x.pow(2).sum((0, 1))
        sa += x[:, :-1].sum((0, 1))
        sb += x[:, 1:].sum((0, 1))
        s12 += (x[:, :-1] * x[:, 1:]).sum((0, 1))
        rows += x.shape[0] * x.shape[1]
        pairs += x.shape[0] * (x.shape[1] - 1)
    if pairs == 0:
        return torch.full((n,), math.nan, dtype=torch.float64)
    mean = s1 / rows
    var = s2 / rows - mean**2
    cov = (s12 - mean * (sa + sb)) / pairs + mean**2
    return torch.where(var > ALIVE_VAR_EPS, cov / var.clamp_min(ALIVE_VAR_EPS), math.nan)
