"""A minimal ReLU SAE built on the public API's LossTermTrainingSAE."""

from dataclasses import dataclass

import torch
from sae_lens.saes.sae import SAEConfig
from torch import nn

from sae_lens_ext.api import (
    LossTermTrainingSAE,
    LossTermTrainingSAEConfig,
    PluginSAE,
    decoder_weighted_sparsity,
)


@dataclass
class ToyReluSAEConfig(SAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return "toy_relu"


class ToyReluSAE(PluginSAE[ToyReluSAEConfig]):
    b_enc: nn.Parameter

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_sae_acts_post(
            torch.relu(self.hook_sae_acts_pre(self.process_sae_in(x) @ self.W_enc + self.b_enc))
        )

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return self.run_time_activation_norm_fn_out(
            self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        )


@dataclass(kw_only=True)
class ToyReluTrainingSAEConfig(LossTermTrainingSAEConfig):
    l1_coefficient: float = 1.0

    @classmethod
    def architecture(cls) -> str:
        return "toy_relu"


class ToyReluTrainingSAE(LossTermTrainingSAE[ToyReluTrainingSAEConfig]):
    b_enc: nn.Parameter

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))

    def encode_with_hidden_pre(self, x):
        hidden_pre = self.hook_sae_acts_pre(self.process_sae_in(x) @ self.W_enc + self.b_enc)
        return self.hook_sae_acts_post(torch.relu(hidden_pre)), hidden_pre

    def base_coefficients(self):
        return {"l1": self.cfg.l1_coefficient}

    def base_aux_loss(self, step_input, feature_acts, hidden_pre, sae_out):
        l1 = decoder_weighted_sparsity(self, feature_acts)
        return {"l1_loss": step_input.coefficients["l1"] * l1}
