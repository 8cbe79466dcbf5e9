"""The ``temporal_consistency`` SAE: config, inference class, training class.

At inference it is a per-token SAE, ``f = act(W_enc^T (x - b_dec) + b_enc)``,
``x_hat = W_dec^T f + b_dec`` with ``act`` = ReLU (default) or GELU. The temporal
loss only shapes training; it needs batches laid out as whole windows of
consecutive positions (see :mod:`.losses`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from torch import nn
from typing_extensions import override

from sae_lens_ext.api import (
    AffineMap,
    LossTermSpec,
    LossTermTrainingSAE,
    LossTermTrainingSAEConfig,
    ReLU,
    SparseEncoder,
    SparseStepFields,
    SparseStepMixin,
    accumulate,
    check_non_negative,
    decoder_weighted_sparsity,
    encoder_input,
)

ARCHITECTURE = "temporal_consistency"
ACTIVATION_FNS = ("relu", "gelu")


def make_activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """ReLU or exact (erf) GELU."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"activation_fn must be one of {ACTIVATION_FNS}, got {name!r}")


def _check_activation_fn(cfg: Any) -> None:
    if cfg.activation_fn not in ACTIVATION_FNS:
        raise ValueError(
            f"{type(cfg).__name__}.activation_fn must be one of {ACTIVATION_FNS}, "
            f"got {cfg.activation_fn!r}"
        )


def _fold_guard(sae: Any) -> None:
    if sae.cfg.activation_fn != "relu":
        raise NotImplementedError(
            "fold_W_dec_norm needs a positively homogeneous activation (ReLU): "
            f"{sae.cfg.activation_fn}(c*x) != c*{sae.cfg.activation_fn}(x), so folding the decoder "
            "norms would change the outputs"
        )


@dataclass
class TemporalConsistencySAEConfig(StandardSAEConfig):
    """Inference config: upstream's standard SAE plus ``activation_fn``.

    Args:
        activation_fn: ``"relu"`` (sparse) or ``"gelu"`` (not sparse: GELU is
            non-zero almost everywhere, so L0 counted as ``|f| > 0`` is ~``d_sae``).
    """

    activation_fn: Literal["relu", "gelu"] = "relu"

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _check_activation_fn(self)

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class TemporalConsistencySAE(StandardSAE):
    """Per-token SAE; identical maths to training (``encode_with_hidden_pre``)."""

    cfg: TemporalConsistencySAEConfig

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return make_activation_fn(self.cfg.activation_fn)

    @override
    def fold_W_dec_norm(self) -> None:
        _fold_guard(self)
        super().fold_W_dec_norm()


@dataclass(kw_only=True)
class TemporalConsistencyTrainingSAEConfig(LossTermTrainingSAEConfig, SparseStepFields):
    """Training config.

    Args:
        activation_fn: ``"relu"`` or ``"gelu"`` (see the inference config).
        l1_coefficient, lp_norm, l1_warm_up_steps: sparsity penalty, as upstream ``standard``
            (``||f * ||W_dec||_row||_p``, mean over rows).
        temporal_window: ``w``, rows per window; a batch of ``N`` rows is ``N / w`` windows of
            ``w`` consecutive positions of one sequence.
        temporal_stride: ``s``, compare positions ``t`` and ``t + s`` inside a window (``1 <= s < w``).
        temporal_coefficient: weight of the ``temporal_consistency`` loss (0 switches it off).
        temporal_loss_form: ``"tv"`` (default): decoder-norm-weighted total variation
            ``sum_i ||W_dec[i]|| |f_t[i] - f_t+s[i]|``; ``"normalized"``:
            ``||f_t - f_t+s||^2 / (||f_t||^2 + ||f_t+s||^2)`` (see :mod:`.losses`).
        temporal_warm_up_steps: linear warm-up of that weight from 0.
        temporal_contrastive_coefficient: weight of the ``temporal_contrastive`` window-InfoNCE
            term (this project's variant, not Bhalla et al.'s T-SAE loss: that is the ``tsae``
            architecture); 0 (default) switches it off.
        temporal_contrastive_fraction: share of latents (the first ones) it acts on; in this
            per-token SAE they are an arbitrary subset, not a trained group.
        temporal_contrastive_temperature: its softmax temperature.
        sparse_step: ``"auto"`` (default), ``"dense"`` or ``"sparse"``: whether a step
            computes the decoder and the backward from the active latents only (same
            gradients; see ``sae_lens_ext.training.sparse``). GELU codes need the dense step.
    """

    activation_fn: Literal["relu", "gelu"] = "relu"
    l1_coefficient: float = 1.0
    lp_norm: float = 1.0
    l1_warm_up_steps: int = 0
    temporal_window: int = 4
    temporal_stride: int = 1
    temporal_coefficient: float = 0.1
    temporal_loss_form: Literal["tv", "normalized"] = "tv"
    temporal_warm_up_steps: int = 0
    temporal_contrastive_coefficient: float = 0.0
    temporal_contrastive_fraction: float = 0.2
    temporal_contrastive_temperature: float = 0.1

    @override
    def __post_init__(self) -> None:
        _check_activation_fn(self)
        if self.temporal_loss_form not in ("tv", "normalized"):
            raise ValueError(
                f"temporal_loss_form must be 'tv' or 'normalized', got {self.temporal_loss_form!r}"
            )
        if self.temporal_window < 2:
            raise ValueError(f"temporal_window must be >= 2, got {self.temporal_window}")
        if not 1 <= self.temporal_stride < self.temporal_window:
            raise ValueError(
                f"temporal_stride must be in [1, temporal_window - 1] = "
                f"[1, {self.temporal_window - 1}], got {self.temporal_stride}"
            )
        check_non_negative(
            self,
            "l1_coefficient",
            "l1_warm_up_steps",
            "temporal_coefficient",
            "temporal_warm_up_steps",
            "temporal_contrastive_coefficient",
        )
        if not 0 < self.temporal_contrastive_fraction <= 1:
            raise ValueError(
                "temporal_contrastive_fraction must be in (0, 1], got "
                f"{self.temporal_contrastive_fraction}"
            )
        if not self.temporal_contrastive_temperature > 0:
            raise ValueError(
                "temporal_contrastive_temperature must be > 0, got "
                f"{self.temporal_contrastive_temperature}"
            )
        self.check_sparse_step()
        super().__post_init__()

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def builtin_loss_terms(self) -> list[LossTermSpec]:
        return [
            LossTermSpec(
                "temporal_consistency", self.temporal_coefficient, self.temporal_warm_up_steps
            ),
            LossTermSpec(
                "temporal_contrastive",
                self.temporal_contrastive_coefficient,
                self.temporal_warm_up_steps,
            ),
        ]


class TemporalConsistencyTrainingSAE(
    SparseStepMixin, LossTermTrainingSAE[TemporalConsistencyTrainingSAEConfig]
):
    """Training class: L1 penalty + enabled temporal loss terms (the core guards every
    architecture against runs that never fire). Its step is sparse once the codes are
    (``sparse_step``, :mod:`sae_lens_ext.training.sparse`)."""

    b_enc: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return make_activation_fn(self.cfg.activation_fn)

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sparse_now:
            return self.encode_sparse_step(x)
        hidden_pre = self.hook_sae_acts_pre(self.process_sae_in(x) @ self.W_enc + self.b_enc)
        return self.hook_sae_acts_post(self.activation_fn(hidden_pre)), hidden_pre

    @override
    def sparse_step_unsupported(self) -> str | None:
        if self.cfg.activation_fn != "relu":
            return f"{self.cfg.activation_fn} codes are not sparse"
        return None

    @override
    def sparse_encoder(self, x: torch.Tensor) -> SparseEncoder:
        sae_in = self.process_sae_in(x)
        enc_in, shift = encoder_input(self, x, sae_in)
        with torch.no_grad():  # the dense step's pre-activations, without a copy
            hidden = self.hook_sae_acts_pre(accumulate(enc_in @ self.W_enc, self.b_enc))
        return SparseEncoder(
            hidden, AffineMap((enc_in,), (self.W_enc,), self.b_enc, shift=shift), ReLU()
        )

    @override
    def base_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"l1": TrainCoefficientConfig(self.cfg.l1_coefficient, self.cfg.l1_warm_up_steps)}

    @override
    def base_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        relu = self.cfg.activation_fn == "relu"
        sparsity = decoder_weighted_sparsity(
            self, feature_acts, p=self.cfg.lp_norm, nonnegative=relu
        )
        return {"l1_loss": step_input.coefficients["l1"] * sparsity}

    @override
    def fold_W_dec_norm(self) -> None:
        _fold_guard(self)
        super().fold_W_dec_norm()
