"""The base training SAE of plugin architectures: its aux loss is the sum of enabled loss terms.

Subclasses write the architecture (encoder, decoder, their own always-on
penalties through :meth:`base_aux_loss`) in SAE-Lens's usual form; this class
adds the plugin loss terms, dead-latent resampling through the
``resample_dead_latents`` hook, and a clear error when a step goes non-finite.
"""

from __future__ import annotations

import warnings
from abc import ABC
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from sae_lens.saes.sae import (
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)

from sae_lens_ext.loss_terms import LossContext, LossTermSpec, parse_loss_terms, parse_options
from sae_lens_ext.resampling import (
    _PENDING,
    ResampleRequest,
    ResampleResult,
    install_optimizer_hook,
    reset_optimizer_rows,
)


def decoder_weighted_sparsity(sae: Any, feature_acts: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """SAE-Lens's standard sparsity penalty: batch mean of ``|| a * ||W_dec[i]|| ||_p``."""
    return (feature_acts * sae.W_dec.norm(dim=1)).norm(p=p, dim=-1).mean()


def check_non_negative(cfg: Any, *names: str) -> None:
    """Raise a ValueError naming the first field of ``cfg`` that is negative."""
    for name in names:
        value = getattr(cfg, name)
        if not value >= 0:
            raise ValueError(f"{type(cfg).__name__}.{name} must be >= 0, got {value}")


@dataclass(kw_only=True)
class LossTermTrainingSAEConfig(TrainingSAEConfig, ABC):
    """Config fields shared by every plugin training SAE.

    Args:
        loss_terms: extra loss terms, ``"name=coefficient@warm_up_steps,..."``
            (any term a loaded plugin registers; see ``sae-lens plugins``).
        loss_term_options: settings for those terms, ``"key=value,..."``.
        resample_dead_every: resample dead latents every this many steps
            (0: never). Dead means SAE-Lens's trainer saw no firing for
            ``dead_feature_window`` steps.
    """

    loss_terms: str = ""
    loss_term_options: str = ""
    resample_dead_every: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(
                f"{type(self).__name__}: d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}"
            )
        check_non_negative(self, "resample_dead_every")
        self.check_loss_term_options(self.enabled_loss_terms())  # now, not at the first step

    def builtin_loss_terms(self) -> list[LossTermSpec]:
        """Terms the architecture turns on from its own fields (override)."""
        return []

    def check_loss_term_options(self, specs: list[LossTermSpec]) -> None:
        """Refuse ``loss_term_options`` keys that no enabled term reads, or that a config
        field of the same name would silently override."""
        from sae_lens_ext.plugins import loss_terms

        known = loss_terms()
        readable = {opt for spec in specs for opt in known[spec.name].options}
        for key in parse_options(self.loss_term_options):
            if hasattr(self, key):
                raise ValueError(
                    f"loss_term_options: {key!r} is a field of {type(self).__name__}; set it directly"
                )
            if key not in readable:
                raise ValueError(
                    f"loss_term_options: no enabled loss term reads {key!r}; they read: "
                    f"{', '.join(sorted(readable)) or 'nothing'}"
                )

    def enabled_loss_terms(self) -> list[LossTermSpec]:
        from sae_lens_ext.plugins import loss_terms

        specs = [s for s in self.builtin_loss_terms() if s.coefficient > 0 or s.warm_up_steps]
        extra = parse_loss_terms(self.loss_terms)
        known = loss_terms()
        for spec in [*specs, *extra]:
            if spec.name not in known:
                raise ValueError(
                    f"loss_terms: unknown loss term {spec.name!r}; registered: "
                    f"{', '.join(sorted(known)) or 'none'}"
                )
        clash = {s.name for s in specs} & {s.name for s in extra}
        if clash:
            raise ValueError(
                f"loss_terms: {sorted(clash)} already enabled by this architecture's own fields"
            )
        return specs + extra


T_CFG = TypeVar("T_CFG", bound=LossTermTrainingSAEConfig)


class LossTermTrainingSAE(TrainingSAE[T_CFG]):
    """A TrainingSAE whose auxiliary loss is its own penalties plus plugin loss terms."""

    def __init__(self, cfg: T_CFG, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        from sae_lens_ext.plugins import loss_terms

        registry = loss_terms()
        self._terms = [(spec, registry[spec.name]) for spec in cfg.enabled_loss_terms()]
        self._term_options = parse_options(cfg.loss_term_options)
        self._pending_resample: tuple[torch.Tensor, ResampleResult] | None = None
        self._step_metrics: dict[str, Any] = {}
        self.n_resampled = 0
        install_optimizer_hook()

    # --- what subclasses override -------------------------------------------------
    def base_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        """Coefficients of the architecture's own penalties."""
        return {}

    def base_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The architecture's own penalties (e.g. an L1 term)."""
        return {}

    def latent_parameters(self) -> dict[str, int]:
        """Parameters indexed by latent, with the axis that indexes latents."""
        names = {"W_enc": 1, "W_dec": 0, "b_enc": 0}
        return {n: d for n, d in names.items() if hasattr(self, n)}

    # --- SAE-Lens interface -----------------------------------------------------------
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            **self.base_coefficients(),
            **{
                spec.name: TrainCoefficientConfig(spec.coefficient, spec.warm_up_steps)
                for spec, _ in self._terms
            },
        }

    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        losses = dict(self.base_aux_loss(step_input, feature_acts, hidden_pre, sae_out))
        if not self._terms:
            return losses
        ctx = LossContext(
            sae=self,
            step_input=step_input,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            sae_out=sae_out,
            options=self._term_options,
            metrics=self._step_metrics,
        )
        for spec, term in self._terms:
            coefficient = step_input.coefficients.get(spec.name, spec.coefficient)
            losses[f"{spec.name}_loss"] = coefficient * term.fn(ctx)
        return losses

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if self._pending_resample is not None:  # no optimizer step ran since it was chosen
            warnings.warn(
                "resampled latents applied without an optimizer step hook: optimizer "
                "moments were not reset",
                RuntimeWarning,
                stacklevel=2,
            )
            self.apply_pending_resample(None)
        self._step_metrics = {}
        output = super().training_forward_pass(step_input)
        output.metrics.update(self._step_metrics)
        if not torch.isfinite(output.loss):
            bad_input = not bool(torch.isfinite(step_input.sae_in).all())
            raise FloatingPointError(
                f"training step {step_input.n_training_steps}: loss is {output.loss.item()}"
                + (
                    " because the input activations contain NaN/inf; check the model, hook and dtype"
                    if bad_input
                    else "; lower lr or the loss coefficients"
                )
            )
        self._maybe_schedule_resample(step_input, output)
        return output

    # --- resampling ---------------------------------------------------------------------
    @torch.no_grad()
    def _maybe_schedule_resample(self, step_input: TrainStepInput, output: TrainStepOutput) -> None:
        every = self.cfg.resample_dead_every
        mask = step_input.dead_neuron_mask
        if not every or mask is None or (step_input.n_training_steps + 1) % every:
            return
        dead = mask.nonzero().flatten()
        if dead.numel() == 0:
            return
        from sae_lens_ext.plugins import load_plugins

        request = ResampleRequest(
            sae=self,
            dead_latents=dead,
            sae_in=step_input.sae_in.detach(),
            sae_out=output.sae_out.detach(),
            step=step_input.n_training_steps,
        )
        result = load_plugins().hook.resample_dead_latents(request=request)
        if result is None:
            return
        self._check_result(dead, result)
        self._pending_resample = (dead, result)
        _PENDING.add(self)

    def _check_result(self, dead: torch.Tensor, result: ResampleResult) -> None:
        latent_params = self.latent_parameters()
        for name, value in result.values.items():
            if name not in latent_params:
                raise ValueError(
                    f"resampler {result.resampler!r} returned {name!r}, not a latent parameter "
                    f"({', '.join(latent_params)})"
                )
            param = self.get_parameter(name)
            expected = list(param.shape)
            expected[latent_params[name]] = dead.numel()
            if list(value.shape) != expected:
                raise ValueError(
                    f"resampler {result.resampler!r}: {name} has shape {list(value.shape)}, "
                    f"expected {expected}"
                )

    @torch.no_grad()
    def apply_pending_resample(self, optimizer: Any | None) -> None:
        """Write the chosen rows and reset their optimizer moments (called by the core)."""
        if self._pending_resample is None:
            return
        dead, result = self._pending_resample
        self._pending_resample = None
        _PENDING.discard(self)
        for name, dim in self.latent_parameters().items():
            param = self.get_parameter(name)
            rows = dead.to(param.device)
            if name in result.values:
                param.data.index_copy_(dim, rows, result.values[name].to(param.device, param.dtype))
            if optimizer is not None:
                reset_optimizer_rows(optimizer, param, dim, rows)
        self.n_resampled += dead.numel()
