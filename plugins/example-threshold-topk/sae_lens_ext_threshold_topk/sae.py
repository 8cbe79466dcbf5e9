"""``threshold_topk``: a TopK SAE whose latents also have a learned threshold.

A latent fires when it is among the ``k`` largest contributions of its row *and* its
pre-activation clears its own threshold, so rows may use fewer than ``k`` latents::

    hidden = (x - b_dec) @ W_enc + b_enc
    gated  = relu(hidden) * (relu(hidden) > threshold)        # JumpReLU
    codes  = gated on the k largest gated * ||W_dec[i]||, 0 elsewhere
    x_hat  = codes @ W_dec + b_dec

The threshold trains through SAE-Lens's straight-through estimators (``JumpReLU``,
``Step``), pushed up by an L0 penalty and down by the reconstruction loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from sae_lens.saes.jumprelu_sae import JumpReLU, Step
from sae_lens.saes.sae import SAEConfig, TrainCoefficientConfig, TrainStepInput
from torch import nn
from typing_extensions import override

from sae_lens_ext.api import (
    LatentAxis,
    LossTermTrainingSAE,
    LossTermTrainingSAEConfig,
    PluginSAE,
    check_non_negative,
)

ARCHITECTURE = "threshold_topk"


@dataclass(kw_only=True)
class ThresholdTopKFields:
    """Fields that change what the SAE computes: in both configs, so the saved SAE
    computes what was trained.

    Args:
        k: at most this many latents fire per row.
    """

    k: int = 32


@dataclass
class ThresholdTopKSAEConfig(SAEConfig, ThresholdTopKFields):
    """Inference config (what ``cfg.json`` holds)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


@dataclass(kw_only=True)
class ThresholdTopKTrainingSAEConfig(LossTermTrainingSAEConfig, ThresholdTopKFields):
    """Training config: the architecture's fields, then training-only ones.

    Args:
        l0_coefficient: weight of the L0 penalty that raises the thresholds.
        l0_warm_up_steps: linear warm-up of that weight.
        bandwidth: width of the straight-through estimators' window.
        threshold_init: every threshold's starting value.
    """

    l0_coefficient: float = 0.01
    l0_warm_up_steps: int = 0
    bandwidth: float = 0.05
    threshold_init: float = 0.001

    @override
    def __post_init__(self) -> None:
        check_non_negative(self, "l0_coefficient", "l0_warm_up_steps", "threshold_init")
        if self.k < 1 or not self.bandwidth > 0:
            raise ValueError(f"k must be >= 1 and bandwidth > 0, got {self.k}, {self.bandwidth}")
        super().__post_init__()

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


def keep_top_k(gated: torch.Tensor, W_dec: torch.Tensor, k: int) -> torch.Tensor:
    """``gated`` on each row's ``k`` largest contributions ``gated * ||W_dec[i]||``, 0
    elsewhere (ranking by contribution keeps ``fold_W_dec_norm`` exact)."""
    scores = gated * W_dec.norm(dim=-1)
    index = scores.topk(min(k, gated.shape[-1]), dim=-1).indices
    return torch.zeros_like(gated).scatter(-1, index, gated.gather(-1, index))


def new_parameters(
    d_sae: int, threshold: float, dtype: torch.dtype, device: torch.device
) -> tuple[nn.Parameter, nn.Parameter]:
    """``(b_enc, threshold)``: the encoder bias is the architecture's to create."""
    zeros = torch.zeros(d_sae, dtype=dtype, device=device)
    return nn.Parameter(zeros.clone()), nn.Parameter(zeros + threshold)


#: The extra latent-indexed parameter: on the scale of the pre-activations, so folding
#: the decoder norms multiplies it by them, as it does W_enc and b_enc.
THRESHOLD_AXIS = {"threshold": LatentAxis(0, fold=1)}


class ThresholdTopKSAE(PluginSAE[ThresholdTopKSAEConfig]):
    """Inference class: what is saved, loaded (``SAE.load_from_disk``) and evaluated."""

    b_enc: nn.Parameter
    threshold: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()  # W_enc, W_dec, b_dec
        self.b_enc, self.threshold = new_parameters(self.cfg.d_sae, 0.0, self.dtype, self.device)

    @override
    def latent_parameters(self) -> Mapping[str, LatentAxis | None]:
        return {**super().latent_parameters(), **THRESHOLD_AXIS}

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hook_sae_acts_pre(self.process_sae_in(x) @ self.W_enc + self.b_enc).relu()
        gated = hidden * (hidden > self.threshold)  # what JumpReLU computes in training
        return self.hook_sae_acts_post(keep_top_k(gated, self.W_dec, self.cfg.k))

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        return self.reshape_fn_out(self.run_time_activation_norm_fn_out(out), self.d_head)


class ThresholdTopKTrainingSAE(LossTermTrainingSAE[ThresholdTopKTrainingSAEConfig]):
    """Training class: reconstruction + the L0 penalty + any plugin loss terms."""

    b_enc: nn.Parameter
    threshold: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        init = self.cfg.threshold_init
        self.b_enc, self.threshold = new_parameters(self.cfg.d_sae, init, self.dtype, self.device)

    @override
    def latent_parameters(self) -> Mapping[str, LatentAxis | None]:
        return {**super().latent_parameters(), **THRESHOLD_AXIS}

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_pre = self.hook_sae_acts_pre(self.process_sae_in(x) @ self.W_enc + self.b_enc)
        gated = JumpReLU.apply(hidden_pre.relu(), self.threshold, self.cfg.bandwidth, False)
        return self.hook_sae_acts_post(keep_top_k(gated, self.W_dec, self.cfg.k)), hidden_pre

    @override
    def base_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"l0": TrainCoefficientConfig(self.cfg.l0_coefficient, self.cfg.l0_warm_up_steps)}

    @override
    def base_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The L0 penalty: rows' count of latents above threshold (its straight-through
        gradient raises the thresholds)."""
        above = Step.apply(hidden_pre.relu(), self.threshold, self.cfg.bandwidth, False)
        return {"l0_loss": step_input.coefficients["l0"] * above.sum(-1).mean()}
