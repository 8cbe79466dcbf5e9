"""The frequency-ordered SAE (``freq_ordered``): config, inference class and training class.

A ReLU SAE whose latents are kept in order of firing frequency (latent 0 fires
most often) by the ``frequency_ordering`` loss term, with the options of the
research log "Frequency-Based Feature Ordering in Sparse Autoencoders":
an adaptive L1 penalty, dead-latent resampling, LayerNorm on the encoder
pre-activations, a scaled skip projection inside the encoder and causal
self-attention within windows of consecutive positions.

Encoder (``u = process_sae_in(x)``, i.e. ``x - b_dec``)::

    a      = u + attention(u)                  # attention=True only
    h      = a @ W_enc + b_enc
           + skip_scale * (u @ W_skip)         # skip_projection=True only
    h      = LayerNorm_affine(h)               # layer_norm=True only
    acts   = ReLU(h)
    x_hat  = acts @ W_dec + b_dec

Every path from the input to the output goes through ``acts``: nothing
bypasses the sparse code. The inference class and the training class share
this encoder (:class:`FreqOrderedEncoderMixin`), so a saved SAE encodes
exactly what it encoded in training.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import nn
from typing_extensions import override

from sae_lens_ext.api import (
    AffineMap,
    LatentAxis,
    LossTermSpec,
    LossTermTrainingSAE,
    LossTermTrainingSAEConfig,
    PluginSAE,
    ReLU,
    ResampleResult,
    SparseEncoder,
    SparseStepFields,
    SparseStepMixin,
    accumulate,
    check_non_negative,
    codes_of,
    decoder_weighted_sparsity,
    encoder_input,
    permute_latents,
    request_after_step,
)
from sae_lens_ext_plugins.freq_ordered.prefix import PREFIX_TERM, NestedDecodeMixin

ARCHITECTURE = "freq_ordered"
ORDERING_TERM = "frequency_ordering"
ADAPTIVE_L1_TERM = "adaptive_l1"
LN_EPS = 1e-5
DEAD_FREQUENCY = 1e-8  # with sorting on, "dead" also needs latent_frequency <= this


@dataclass(kw_only=True)
class FreqOrderedArchitectureFields:
    """Fields that change what the SAE computes (saved with the inference SAE).

    Args:
        layer_norm: LayerNorm (with per-latent gain and bias) on the encoder
            pre-activations, before the ReLU (log run 7). Default off.
        skip_projection: add ``skip_scale * (x - b_dec) @ W_skip`` to the
            pre-activations (log run 8). It lives inside the encoder, so it only
            reaches the output through the sparse code. Default off.
        skip_scale: scale of the skip projection (log: 0.1).
        attention: causal self-attention over the positions of one window, its
            output added to the encoder input (log run 9). Needs
            ``attention_window >= 2``. Default off.
        attention_window: number of consecutive positions of one sequence that
            make up a window. A 2-D batch ``(N, d_in)`` is read as ``N /
            attention_window`` windows of consecutive positions (the window layout:
            train from an unshuffled activation stream); a ``(..., seq, d_in)``
            input is cut into blocks of this many positions along ``seq``. Each
            position attends to itself and the earlier positions of its window,
            never to another window. 0: no sequence axis (attention must be off).
        attention_dim: width of the query/key projections (0: ``d_in``).
    """

    layer_norm: bool = False
    skip_projection: bool = False
    skip_scale: float = 0.1
    attention: bool = False
    attention_window: int = 0
    attention_dim: int = 0

    def architecture_window(self) -> int:
        """Consecutive positions a batch must keep together: the attention window."""
        return self.attention_window if self.attention else 1

    def batch_window(self) -> int:
        """See :mod:`sae_lens_ext.data.windows` (the training config also counts loss terms)."""
        return self.architecture_window()

    def validate_architecture_fields(self) -> None:
        name = type(self).__name__
        check_non_negative(self, "skip_scale", "attention_window", "attention_dim")
        if self.attention and self.attention_window < 2:
            raise ValueError(
                f"{name}.attention_window must be >= 2 when attention=True (got "
                f"{self.attention_window}): attention needs a sequence axis, i.e. windows of "
                "consecutive positions; without one, switch attention off"
            )


@dataclass
class FreqOrderedSAEConfig(SAEConfig, FreqOrderedArchitectureFields):
    """Inference config of the frequency-ordered SAE."""

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_architecture_fields()

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


if TYPE_CHECKING:  # a mixin of SAE-Lens SAEs: type-checked as one
    _SAEBase = SAE[Any]
else:
    _SAEBase = object


class FreqOrderedEncoderMixin(_SAEBase):
    """Parameters, encoder, decoder and weight folding shared by both classes."""

    cfg: Any
    b_enc: nn.Parameter
    latent_frequency: torch.Tensor
    frequency_updates: torch.Tensor

    def init_freq_ordered_parameters(self) -> None:
        """Create ``b_enc``, the optional parameters and the frequency buffer."""
        cfg, kw = self.cfg, dict[str, Any](dtype=self.dtype, device=self.device)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        if cfg.layer_norm:
            self.ln_weight = nn.Parameter(torch.ones(cfg.d_sae, **kw))
            self.ln_bias = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        if cfg.skip_projection:
            # zero init: training starts from the plain SAE
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, **kw))
        if cfg.attention:
            d_att = cfg.attention_dim or cfg.d_in
            self.W_q = nn.Parameter(torch.empty(cfg.d_in, d_att, **kw))
            self.W_k = nn.Parameter(torch.empty(cfg.d_in, d_att, **kw))
            if self.device.type != "meta":
                nn.init.normal_(self.W_q, std=cfg.d_in**-0.5)
                nn.init.normal_(self.W_k, std=cfg.d_in**-0.5)
            # zero value projection: attention starts as a no-op
            self.W_v = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_in, **kw))
        # EMA of each latent's firing rate (fraction of inputs where it is > 0),
        # persistent so that it is saved, restored on resume and readable after training
        self.register_buffer(
            "latent_frequency",
            torch.zeros(cfg.d_sae, dtype=torch.float32, device=self.device),
            persistent=True,
        )
        self.register_buffer(
            "frequency_updates",
            torch.zeros((), dtype=torch.float32, device=self.device),
            persistent=True,
        )

    # --- encoder ---------------------------------------------------------------------
    def attend(self, u: torch.Tensor) -> torch.Tensor:
        """Causal self-attention within windows of ``attention_window`` positions."""
        w, d = self.cfg.attention_window, u.shape[-1]
        if u.ndim == 2:
            if u.shape[0] % w:
                raise ValueError(
                    f"attention_window={w}: a 2-D batch must hold whole windows of consecutive "
                    f"positions, but it has {u.shape[0]} rows (not a multiple of {w})"
                )
            blocks, pad, lead = u.reshape(-1, w, d), 0, None
        else:
            lead, seq = u.shape[:-2], u.shape[-2]
            pad = (-seq) % w
            padded = F.pad(u, (0, 0, 0, pad)) if pad else u
            blocks = padded.reshape(-1, w, d)
        q, k, v = blocks @ self.W_q, blocks @ self.W_k, blocks @ self.W_v
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if lead is None:
            return out.reshape(u.shape)
        out = out.reshape(*lead, -1, d)
        return out[..., : out.shape[-2] - pad, :] if pad else out

    def encoder_input(self, sae_in: torch.Tensor) -> torch.Tensor:
        """What ``W_enc`` reads: ``x - b_dec``, plus attention's output with ``attention``."""
        return sae_in + self.attend(sae_in) if self.cfg.attention else sae_in

    def affine_pre_activations(self, enc_in: torch.Tensor, sae_in: torch.Tensor) -> torch.Tensor:
        """``enc_in @ W_enc + b_enc`` (+ the skip projection of ``sae_in``): the pre-activations
        before the LayerNorm."""
        cfg = self.cfg
        hidden = accumulate(enc_in @ self.W_enc, self.b_enc)  # in place without autograd
        if cfg.skip_projection:
            hidden = accumulate(hidden, cfg.skip_scale * (sae_in @ self.W_skip))
        return hidden

    def pre_activations(self, sae_in: torch.Tensor) -> torch.Tensor:
        """Pre-activations (what the ReLU sees) of the processed input ``x - b_dec``."""
        cfg = self.cfg
        hidden = self.affine_pre_activations(self.encoder_input(sae_in), sae_in)
        if cfg.layer_norm:
            hidden = F.layer_norm(hidden, (cfg.d_sae,), self.ln_weight, self.ln_bias, LN_EPS)
        return hidden

    def check_input_width(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in and not self.hook_z_reshaping_mode:
            raise ValueError(
                f"d_in: the SAE expects inputs of width d_in={self.cfg.d_in}, got {x.shape[-1]}"
            )

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_input_width(x)
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(self.pre_activations(sae_in))
        feature_acts = self.hook_sae_acts_post(self.activation_fn(hidden_pre))
        return feature_acts, hidden_pre

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_with_hidden_pre(x)[0]

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        sae_out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        sae_out = self.run_time_activation_norm_fn_out(sae_out)
        return self.reshape_fn_out(sae_out, self.d_head)

    # --- the latent table (resampling, the sort, optimizer state, folding) -------------------
    def latent_parameters(self) -> dict[str, LatentAxis | None]:
        """Every latent-indexed tensor. Folding the decoder norms (ReLU commutes with a
        positive per-latent scale) moves the scale into the last linear map before the
        ReLU: the LayerNorm gain and bias when ``layer_norm`` is on (the LayerNorm
        statistics are then untouched), else ``W_enc``, ``b_enc`` and ``W_skip``."""
        cfg, pre = self.cfg, 0 if self.cfg.layer_norm else 1
        table: dict[str, LatentAxis | None] = {
            "W_enc": LatentAxis(1, fold=pre),
            "W_dec": LatentAxis(0, fold=-1),
            "b_enc": LatentAxis(0, fold=pre),
            "b_dec": None,
            "latent_frequency": LatentAxis(0, fold=0),  # firing is unchanged by folding
        }
        if cfg.layer_norm:
            table.update(ln_weight=LatentAxis(0, fold=1), ln_bias=LatentAxis(0, fold=1))
        if cfg.skip_projection:
            table["W_skip"] = LatentAxis(1, fold=pre)
        if cfg.attention:  # attention over positions: no latent axis (d_in may equal d_sae)
            table.update(W_q=None, W_k=None, W_v=None)
        return table

    # --- weight folding ------------------------------------------------------------------
    @override
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold the trainer's input scale ``s`` (the SAE saw ``s * x``) into the weights."""
        super().fold_activation_norm_scaling_factor(scaling_factor)
        if self.cfg.skip_projection:
            self.W_skip.data.mul_(scaling_factor)
        if self.cfg.attention:  # attention sees (s x - b_dec) / s: restore its logits
            self.W_q.data.mul_(scaling_factor)
            self.W_k.data.mul_(scaling_factor)

    @override
    def fold_activation_whitening(self, *args: Any, **kwargs: Any) -> None:
        if self.cfg.attention or self.cfg.skip_projection:
            raise NotImplementedError(
                "freq_ordered: covariance_whitening cannot be folded with attention or "
                "skip_projection on; use normalize_activations='none' or "
                "'expected_average_only_in'"
            )
        super().fold_activation_whitening(*args, **kwargs)

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        """Refuse weights of another shape with a message naming the setting."""
        for name, value in state_dict.items():
            own = self._parameters.get(name, self._buffers.get(name))
            if own is not None and tuple(own.shape) != tuple(value.shape):
                raise ValueError(
                    f"{name}: checkpoint has shape {tuple(value.shape)} but this config "
                    f"(d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, attention_dim="
                    f"{self.cfg.attention_dim}) gives {tuple(own.shape)}; fix d_in / d_sae"
                )
        missing = sorted(set(self._parameters) - set(state_dict))
        if missing:
            raise ValueError(
                f"checkpoint lacks {missing}: its layer_norm / skip_projection / attention "
                "settings differ from this config's"
            )
        # checkpoints written before the frequency buffer existed still load
        state_dict.setdefault("latent_frequency", torch.zeros(self.cfg.d_sae))
        state_dict.setdefault("frequency_updates", torch.zeros(()))


class FreqOrderedSAE(FreqOrderedEncoderMixin, PluginSAE[FreqOrderedSAEConfig]):
    """Inference class of ``freq_ordered`` (what is saved, loaded and uploaded)."""

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.init_freq_ordered_parameters()


@dataclass(kw_only=True)
class FreqOrderedTrainingSAEConfig(
    LossTermTrainingSAEConfig, FreqOrderedArchitectureFields, SparseStepFields
):
    """Training config of ``freq_ordered``. The defaults are the benchmarked recommendation,
    the prefix mode (docs/benchmarks-freq-ordered.md): ordering loss and periodic sort, the
    prefix term at 1 ramped over the whole run, a lower L1; named presets give the research
    log's runs (``sae-lens train --preset log-run-5``).

    Warm-ups are a fraction of the run (``*_warm_up_fraction``) unless given in steps
    (``*_warm_up_steps``, which then wins). The run's length is what ``sae-lens train``,
    ``demo`` and ``sweep`` tell the SAE (:meth:`~sae_lens_ext.training.sae.LossTermTrainingSAE.
    set_training_steps`); SAE-Lens's own runners cannot, and there a fraction is taken of
    ``FALLBACK_TRAINING_STEPS`` (1,000) steps, with a warning.

    Args:
        ordering_coefficient: weight of the ``frequency_ordering`` loss (log run 2: 0.3).
        ordering_warm_up_steps: the ordering coefficient ramps linearly from 0 over this
            many steps (log run 3: 0 -> 0.5 over 1000 of its 4,882 steps); ``None``
            (default): over ``ordering_warm_up_fraction`` of the run.
        ordering_warm_up_fraction: that ramp as a share of the run (default 0: the loss
            does most good while latents are still choosing their features).
        frequency_decay: decay of the EMA firing-rate buffer ``latent_frequency``
            (time constant ``1 / (1 - decay)`` steps).
        frequency_temperature: temperature of the soft firing rate
            ``mean(sigmoid(hidden_pre / T))`` that carries the ordering gradient.
        ordering_rows: the soft rate is computed on this many evenly strided rows of
            the batch (0: all rows); it only carries a gradient estimate.
        l1_coefficient: weight of the L1 penalty on ``acts * ||W_dec row||``
            (the base of the adaptive L1; log run 5 used 0.04 on its own data scale).
            Default 0.6: the prefix term makes codes denser, and the benchmark's prefix mode
            takes 0.6x the L1 of ``standard``'s runs.
        l1_warm_up_steps: linear warm-up of the L1 coefficient.
        adaptive_l1: scale the L1 penalty by the batch's mean cosine similarity
            between input and reconstruction (log run 5), as the ``adaptive_l1``
            loss term; off: a plain L1 (``l1_loss``).
        sort_latents_every: every this many steps, permute the latents (parameters,
            Adam moments and the frequency buffer) so that ``latent_frequency`` is
            non-increasing in the index (0: never). Exact: the function the SAE
            computes does not change. Not in the log; see the docs for why it is on.
        prefix_coefficient: weight of the ``prefix_reconstruction`` loss, the mean
            reconstruction loss of prefixes (the first ``k`` latents of the current
            order) drawn every step (default 1; 0: off). See ``prefix.py``.
        prefix_warm_up_steps: linear warm-up of that weight in steps; ``None`` (default):
            over ``prefix_warm_up_fraction`` of the run.
        prefix_warm_up_fraction: that ramp as a share of the run (default 1: the whole run,
            so that features form before the prefixes reorganise them).
        prefix_samples: prefix lengths drawn per step (stratified).
        prefix_min_fraction: shortest prefix drawn, as a fraction of ``d_sae``.
        prefix_exponent: prefix lengths follow ``p(k) ~ k^-prefix_exponent`` on
            ``[prefix_min_fraction * d_sae, d_sae)`` (1: log-uniform, 0: uniform).
        sparse_step: ``"auto"`` (default), ``"dense"`` or ``"sparse"``: whether a step
            computes the decoder and the backward from the active latents only (same
            gradients; see ``sae_lens_ext.training.sparse``). ``layer_norm`` needs the dense step.
        resample_dead_every: inherited; resample dead latents every this many
            steps through the ``resample_dead_latents`` hook (log run 4). With
            sorting on, a latent counts as dead only if SAE-Lens's trainer says so
            *and* its ``latent_frequency`` is 0 (the trainer's counters are indexed by
            position and do not follow a permutation).

    Gradient clipping (log run 6, max norm 1.0) is not a field: SAE-Lens's
    trainer already clips every SAE's gradient norm at 1.0.
    """

    ordering_coefficient: float = 0.3
    ordering_warm_up_steps: int | None = None
    ordering_warm_up_fraction: float = 0.0
    frequency_decay: float = 0.99
    frequency_temperature: float = 0.1
    ordering_rows: int = 128
    l1_coefficient: float = 0.6
    l1_warm_up_steps: int = 0
    adaptive_l1: bool = False
    sort_latents_every: int = 25
    prefix_coefficient: float = 1.0
    prefix_warm_up_steps: int | None = None
    prefix_warm_up_fraction: float = 1.0
    prefix_samples: int = 4
    prefix_min_fraction: float = 0.05
    prefix_exponent: float = 0.5

    @override
    def __post_init__(self) -> None:
        name = type(self).__name__
        check_non_negative(
            self,
            "ordering_coefficient",
            "l1_coefficient",
            "l1_warm_up_steps",
            "sort_latents_every",
            "ordering_rows",
            "prefix_coefficient",
            "prefix_exponent",
        )
        for steps in ("ordering_warm_up_steps", "prefix_warm_up_steps"):
            if getattr(self, steps) is not None:
                check_non_negative(self, steps)
        for fraction in ("ordering_warm_up_fraction", "prefix_warm_up_fraction"):
            if not 0.0 <= getattr(self, fraction) <= 1.0:
                raise ValueError(
                    f"{name}.{fraction} must be in [0, 1], got {getattr(self, fraction)}"
                )
        if self.prefix_samples < 1:
            raise ValueError(f"{name}.prefix_samples must be >= 1, got {self.prefix_samples}")
        if not 0.0 < self.prefix_min_fraction < 1.0:
            raise ValueError(
                f"{name}.prefix_min_fraction must be in (0, 1), got {self.prefix_min_fraction}"
            )
        if not 0.0 <= self.frequency_decay < 1.0:
            raise ValueError(
                f"{name}.frequency_decay must be in [0, 1), got {self.frequency_decay}"
            )
        if not self.frequency_temperature > 0:
            raise ValueError(
                f"{name}.frequency_temperature must be > 0, got {self.frequency_temperature}"
            )
        self.validate_architecture_fields()
        self.check_sparse_step()
        super().__post_init__()

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def architecture_window(self) -> int:
        return FreqOrderedArchitectureFields.architecture_window(self)

    @override
    def builtin_loss_terms(self) -> list[LossTermSpec]:
        ordering = warm_up(self.ordering_warm_up_steps, self.ordering_warm_up_fraction)
        specs = [LossTermSpec(ORDERING_TERM, self.ordering_coefficient, *ordering)]
        if self.adaptive_l1:
            specs.append(LossTermSpec(ADAPTIVE_L1_TERM, self.l1_coefficient, self.l1_warm_up_steps))
        prefix = warm_up(self.prefix_warm_up_steps, self.prefix_warm_up_fraction)
        specs.append(LossTermSpec(PREFIX_TERM, self.prefix_coefficient, *prefix))
        return specs


def warm_up(steps: int | None, fraction: float) -> tuple[int, float | None]:
    """``LossTermSpec``'s ``(warm_up_steps, warm_up_fraction)``: the steps if given, else the
    fraction of the run."""
    return (steps, None) if steps is not None else (0, fraction)


class FreqOrderedTrainingSAE(
    NestedDecodeMixin,
    SparseStepMixin,
    FreqOrderedEncoderMixin,
    LossTermTrainingSAE[FreqOrderedTrainingSAEConfig],
):
    """Training class of ``freq_ordered``: plain L1 (unless adaptive) + plugin loss terms.
    Its step is sparse once the codes are (``sparse_step``, :mod:`sae_lens_ext.training.sparse`)."""

    def __init__(self, cfg: FreqOrderedTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._sort_due = False
        self.n_sorts = 0

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.init_freq_ordered_parameters()

    # --- the sparse step -------------------------------------------------------------------
    @override
    def sparse_step_unsupported(self) -> str | None:
        if self.cfg.layer_norm:
            return "layer_norm normalises each row over all latents"
        return None

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sparse_now:
            return self.encode_sparse_step(x)
        return super().encode_with_hidden_pre(x)

    @override
    def sparse_encoder(self, x: torch.Tensor) -> SparseEncoder:
        """ReLU of an affine map of ``x - b_dec`` (with attention: of its output, whose
        gradient then flows on through the attention)."""
        self.check_input_width(x)
        sae_in = self.process_sae_in(x)
        if self.cfg.attention:
            enc_in = self.encoder_input(sae_in)
            inputs, shift = (enc_in, sae_in), None
        else:
            enc_in, shift = encoder_input(self, x, sae_in)
            inputs = (enc_in, enc_in)
        weights: tuple[nn.Parameter, ...] = (self.W_enc,)
        coefficients: tuple[float, ...] = (1.0,)
        if self.cfg.skip_projection:
            weights, coefficients = (self.W_enc, self.W_skip), (1.0, self.cfg.skip_scale)
        with torch.no_grad():
            hidden = self.hook_sae_acts_pre(self.affine_pre_activations(enc_in, sae_in))
        affine = AffineMap(inputs[: len(weights)], weights, self.b_enc, coefficients, shift)
        return SparseEncoder(hidden, affine, ReLU())

    @override
    @torch.compiler.disable
    def begin_step(self, step_input: TrainStepInput) -> TrainStepInput:
        step_input = super().begin_step(step_input)
        mask = step_input.dead_neuron_mask
        if self.cfg.sort_latents_every and mask is not None:
            # under SAE-Lens's own runners the trainer's firing counters do not follow a
            # sort: a latent is dead only if the frequency buffer agrees
            alive = self.latent_frequency.to(mask.device) > DEAD_FREQUENCY
            step_input = replace(step_input, dead_neuron_mask=mask & ~alive)
        return step_input

    @override
    @torch.compiler.disable
    def end_step(self, step_input: TrainStepInput, output: TrainStepOutput) -> None:
        """Also ask for a sort after this step's optimizer step when one is due."""
        every = self.cfg.sort_latents_every
        if every and (step_input.n_training_steps + 1) % every == 0:
            self._sort_due = True
            request_after_step(self)
        super().end_step(step_input, output)

    @override
    def training_counts(self) -> dict[str, int]:
        return {**super().training_counts(), "latent_sorts": self.n_sorts + int(self._sort_due)}

    @override
    def restore_training_counts(self, counts: dict[str, int]) -> None:
        super().restore_training_counts(counts)
        self.n_sorts = counts.get("latent_sorts", 0)

    @override
    def after_optimizer_step(self, optimizer: Any) -> torch.Tensor | None:
        """Write a pending resample (with its skip columns, LayerNorm gain/bias and
        frequency restarted), then sort the latents if a sort is due; return the sort's
        permutation."""
        pending = self._pending_resample
        if pending is not None:
            dead, result = pending
            self._pending_resample = (dead, self._complete_result(dead, result))
        super().after_optimizer_step(optimizer)
        return self.sort_latents(optimizer) if self._sort_due else None

    @override
    def skip_after_step_work(self) -> None:
        """A sort without the optimizer would leave Adam's moments on the wrong rows:
        skip it (the next one is due ``sort_latents_every`` steps later)."""
        if self._sort_due:
            self._sort_due = False
            warnings.warn(
                "freq_ordered: a latent sort was skipped because no optimizer step followed "
                "it; call after_optimizer_step(optimizer) after each step",
                RuntimeWarning,
                stacklevel=3,
            )
        super().skip_after_step_work()

    @torch.no_grad()
    def sort_latents(self, optimizer: Any) -> torch.Tensor:
        """Permute latents so that ``latent_frequency`` is non-increasing; permute the
        optimizer's per-latent state along with them. Returns the permutation."""
        self._sort_due = False
        perm = torch.argsort(-self.latent_frequency.float(), stable=True)
        permute_latents(self, perm, optimizer, check=False)  # an argsort: no check, no sync
        self.n_sorts += 1
        return perm

    @override
    def base_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        if self.cfg.adaptive_l1:  # the adaptive_l1 loss term carries the L1 coefficient
            return {}
        return {"l1": TrainCoefficientConfig(self.cfg.l1_coefficient, self.cfg.l1_warm_up_steps)}

    @override
    def base_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        self.update_frequency(feature_acts)
        if self.cfg.adaptive_l1:
            return {}
        l1 = decoder_weighted_sparsity(self, feature_acts, nonnegative=True)  # ReLU codes
        return {"l1_loss": step_input.coefficients["l1"] * l1}

    @torch.no_grad()
    def update_frequency(self, feature_acts: torch.Tensor) -> None:
        """Fold this batch's firing rates into the buffer: a running mean over the first
        ``1 / (1 - frequency_decay)`` steps, an EMA with that decay afterwards (device
        ops only: no host-device sync)."""
        codes = codes_of(feature_acts)
        if codes is not None:  # a sparse step: count the entries
            fired = codes.firing() / max(codes.n_rows, 1)
        else:
            acts = feature_acts.detach().reshape(-1, self.cfg.d_sae)
            # a 1-byte mask and a column sum: fewer memory passes than sign() or a float mask
            fired = acts.ne(0).sum(0, dtype=torch.float32) / max(acts.shape[0], 1)
        fired = self.batch_mean(fired)  # data-parallel: the global batch's rates
        t = self.frequency_updates
        decay = (t / (t + 1.0)).clamp(max=self.cfg.frequency_decay)
        new = decay * self.latent_frequency.float() + (1 - decay) * fired
        self.latent_frequency.copy_(new.to(self.latent_frequency.dtype))
        self.frequency_updates.add_(1)

    def frequency_lever(self) -> torch.Tensor:
        """The per-latent bias added last before the ReLU: the ordering loss's gradient
        goes to it (LayerNorm bias with ``layer_norm``, else ``b_enc``)."""
        return self.ln_bias if self.cfg.layer_norm else self.b_enc

    def _complete_result(self, dead: torch.Tensor, result: ResampleResult) -> ResampleResult:
        """The resampler's values, with the frequency restarted at 0 and, unless it chose
        them, zero skip columns and the alive latents' mean LayerNorm gain."""
        values, n = dict(result.values), dead.numel()
        values.setdefault("latent_frequency", torch.zeros(n))
        if self.cfg.skip_projection:
            values.setdefault("W_skip", torch.zeros(self.cfg.d_in, n))
        if self.cfg.layer_norm:
            alive = torch.ones(self.cfg.d_sae, dtype=torch.bool, device=self.ln_weight.device)
            alive[dead.to(alive.device)] = False
            gain = self.ln_weight[alive].mean() if alive.any() else torch.tensor(1.0)
            values.setdefault("ln_weight", gain.expand(n).clone())
            values.setdefault("ln_bias", torch.zeros(n))
        return ResampleResult(values=values, resampler=result.resampler, info=result.info)
