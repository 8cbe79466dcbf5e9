"""The training side of plugin architectures: loss terms, resampling and after-step work.

- :class:`LossTermsMixin` adds to *any* SAE-Lens training class the plugin loss terms
  enabled in its config (``loss_terms``), dead-latent resampling through the
  ``resample_dead_latents`` hook, after-step work with the optimizer in hand
  (:meth:`LossTermsMixin.after_optimizer_step`, run by :mod:`sae_lens_ext.training.after_step`,
  which also feeds the SAE's steps to the core's guard under SAE-Lens's own runners). Mixed into
  upstream's own classes it makes their training-only twins (:mod:`sae_lens_ext.training.twins`).
- :class:`LossTermTrainingSAEConfig` holds the matching config fields; it mixes into an
  upstream training config the same way.
- :func:`evaluate_loss_terms` runs a step's enabled terms (one call in
  ``calculate_aux_loss``), checks what each returns and names the term's plugin in any error.
- :class:`LossTermTrainingSAE` is the base of a plugin architecture written from scratch:
  subclasses write the encoder (:meth:`~LossTermTrainingSAE.encode_with_hidden_pre`) and
  their own penalties (:meth:`~LossTermTrainingSAE.base_aux_loss`,
  :meth:`~LossTermTrainingSAE.base_coefficients`) in SAE-Lens's usual form.

What a data-parallel run must reduce over ranks inside a step (a batch statistic a
model or a loss term keeps, the global batch a resampler sees and the one choice every
rank applies) goes through :class:`BatchCollectives`, which the core's data-parallel
layer serves: models and terms hold no distributed code and no rank logic.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from abc import ABC
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from typing_extensions import override

from sae_lens_ext.training.after_step import (
    DEFAULT_MAX_SILENT_STEPS,
    TrainingGuard,
    driver_of,
    request_after_step,
)
from sae_lens_ext.training.latents import (
    BASE_LATENT_PARAMETERS,
    ENCODER_BIAS,
    LatentAxis,
    check_latent_values,
    fold_decoder_norms,
    latent_parameters,
    write_latents,
)
from sae_lens_ext.training.loss_terms import (
    LOCAL_COLLECTIVES,
    LOSS_SUFFIX,
    BatchCollectives,
    LossContext,
    LossTerm,
    LossTermSpec,
    is_logging_step,
    parse_loss_terms,
    parse_options,
    resolve_option,
)
from sae_lens_ext.training.resampling import ResampleRequest, ResampleResult
from sae_lens_ext.training.sparse import codes_of, decoder_weighted_l1

#: A warm-up given as a fraction of the run, when the SAE never learns the run's length
#: (SAE-Lens's own runners: :meth:`LossTermTrainingSAE.set_training_steps`), is that fraction
#: of this many steps.
FALLBACK_TRAINING_STEPS = 1000

T_CONFIG = TypeVar("T_CONFIG", bound=SAEConfig)


class _NonNegativeL1(torch.autograd.Function):
    """``mean_rows sum_i a[r, i] * n[i]`` for ``a >= 0``, ``n >= 0`` in one read of ``a``.

    Forward: the column sums of ``a`` (kept, a ``d_sae`` vector) dotted with ``n``, in
    float32. Backward: the gradient in ``a`` is ``n / rows`` on every row, returned as a
    broadcast view (no ``N x d_sae`` tensor is written), and the gradient in ``n`` is the
    column sums / rows. Nothing of size ``N x d_sae`` is saved for backward."""

    @override
    @staticmethod
    def forward(ctx: Any, acts: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        rows = acts.shape[0]
        column_sums = acts.sum(0, dtype=torch.promote_types(acts.dtype, torch.float32))
        ctx.save_for_backward(column_sums, norms)
        ctx.rows, ctx.acts_dtype = rows, acts.dtype
        return (column_sums * norms.to(column_sums.dtype)).sum() / max(rows, 1)  # no autocast op

    @override
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        column_sums, norms = ctx.saved_tensors
        scale = grad / max(ctx.rows, 1)
        grad_acts = grad_norms = None
        if ctx.needs_input_grad[0]:
            grad_acts = (norms * scale).to(ctx.acts_dtype).expand(ctx.rows, -1)
        if ctx.needs_input_grad[1]:
            grad_norms = (column_sums * scale).to(norms.dtype)
        return grad_acts, grad_norms


def decoder_weighted_sparsity(
    sae: Any, feature_acts: torch.Tensor, p: float = 1.0, nonnegative: bool = False
) -> torch.Tensor:
    """SAE-Lens's standard sparsity penalty: batch mean of ``|| a * ||W_dec[i]|| ||_p``.

    ``nonnegative=True`` promises ``feature_acts`` is a ReLU's output: with ``p = 1`` the
    penalty is then ``mean_rows(a @ ||W_dec||)``, computed without an ``N x d_sae``
    temporary or saved tensor (:class:`_NonNegativeL1`; same value up to summation order).
    Its gradient at a zero activation is the slope ``||W_dec[i]|| / N`` where upstream's is
    the subgradient 0; the ReLU's backward zeroes both, so every parameter gets upstream's
    gradient. On a sparse step (:func:`sae_lens_ext.training.sparse.codes_of`) it is read from the
    active entries."""
    norms = sae.W_dec.norm(dim=1)
    codes = codes_of(feature_acts)
    if codes is not None:
        return decoder_weighted_l1(codes, norms, p)
    if nonnegative and p == 1:
        return _NonNegativeL1.apply(feature_acts.reshape(-1, feature_acts.shape[-1]), norms)
    return (feature_acts * norms).norm(p=p, dim=-1).mean()


def check_non_negative(cfg: Any, *names: str) -> None:
    """Raise a ValueError naming the first field of ``cfg`` that is negative."""
    for name in names:
        value = getattr(cfg, name)
        if not value >= 0:
            raise ValueError(f"{type(cfg).__name__}.{name} must be >= 0, got {value}")


# ---------------------------------------------------------------------------------------
# The inference side of a plugin architecture
# ---------------------------------------------------------------------------------------
class PluginSAE(SAE[T_CONFIG], ABC):
    """Base of a plugin architecture's *inference* class (what is saved, loaded, uploaded).

    Subclass it with your inference config (``class MySAE(PluginSAE[MySAEConfig])``) and:

    - create every parameter beyond upstream's ``W_enc``, ``W_dec`` and ``b_dec`` in
      :meth:`initialize_weights` after ``super().initialize_weights()``; ``b_enc`` too: it
      is the architecture's to create (or not);
    - implement ``encode`` and ``decode`` exactly as the training class computes them
      (share the code through a mixin), through upstream's hook points
      (``hook_sae_acts_pre``, ``hook_sae_acts_post``, ``hook_sae_recons``) and
      ``process_sae_in`` / ``run_time_activation_norm_fn_out``;
    - declare every tensor with an axis of size ``d_sae`` in :meth:`latent_parameters`;
      :meth:`fold_and_get_W_dec_norm` (behind upstream's ``fold_W_dec_norm``) is then
      exact for it. Override ``fold_W_dec_norm`` to refuse (``NotImplementedError``)
      where the activation does not commute with a positive per-latent scale, and
      ``fold_activation_norm_scaling_factor`` (calling ``super()``) for every parameter
      that reads the input directly besides ``W_enc`` and ``b_dec``.
    """

    def __init__(self, cfg: T_CONFIG, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        latent_parameters(self)  # a latent-indexed tensor left undeclared fails now

    def latent_parameters(self) -> Mapping[str, LatentAxis | None]:
        """Every parameter and buffer with an axis of size ``d_sae``: its latent axis and
        how it folds (:class:`~sae_lens_ext.training.latents.LatentAxis`), or ``None`` when it is
        not indexed by latent. The default covers ``W_enc``, ``W_dec``, ``b_dec`` and, if
        the architecture created one, ``b_enc``; extend it with ``super()``."""
        return latent_parameters_of_base(self)

    @override
    @torch.no_grad()
    def fold_and_get_W_dec_norm(self) -> torch.Tensor:
        """Unit decoder rows, their norms moved into the latent-indexed tensors as
        :meth:`latent_parameters` declares (:func:`~sae_lens_ext.training.latents.fold_decoder_norms`)."""
        return fold_decoder_norms(self)


def latent_parameters_of_base(sae: torch.nn.Module) -> dict[str, LatentAxis | None]:
    """Upstream's base parameters and, if the architecture created one, ``b_enc``."""
    table = dict(BASE_LATENT_PARAMETERS)
    if isinstance(getattr(sae, "b_enc", None), torch.nn.Parameter):
        table["b_enc"] = ENCODER_BIAS
    return table


# ---------------------------------------------------------------------------------------
# The training side
# ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class LossTermTrainingSAEConfig(TrainingSAEConfig, ABC):
    """Config fields of every training SAE that takes plugin loss terms.

    The base of a plugin architecture's training config, and a mixin for an upstream one:
    ``@dataclass(kw_only=True) class MyCfg(LossTermTrainingSAEConfig, UpstreamCfg)``.

    Args:
        loss_terms: extra loss terms, ``"name=coefficient@warm_up_steps,..."``
            (any term a loaded plugin registers; see ``sae-lens plugins``).
        loss_term_options: settings for those terms, ``"key=value,..."``.
        resample_dead_every: resample dead latents every this many steps
            (0: never). Dead means SAE-Lens's trainer saw no firing for
            ``dead_feature_window`` steps.
        max_silent_steps: stop with an error if no latent fires on a whole batch for
            this many consecutive steps (0: never).
    """

    loss_terms: str = ""
    loss_term_options: str = ""
    resample_dead_every: int = 0
    max_silent_steps: int = DEFAULT_MAX_SILENT_STEPS

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(
                f"{type(self).__name__}: d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}"
            )
        check_non_negative(self, "resample_dead_every", "max_silent_steps")
        specs = self.enabled_loss_terms()
        self.check_loss_term_options(specs)  # now, not at the first step
        self.batch_window()  # a bad window setting fails now too

    def builtin_loss_terms(self) -> list[LossTermSpec]:
        """Terms the architecture turns on from its own fields (override)."""
        return []

    def architecture_window(self) -> int:
        """Consecutive positions the architecture itself needs together (override)."""
        return 1

    def batch_window(self) -> int:
        """Consecutive positions a training batch must keep together: the most any part
        needs (the architecture, or an enabled loss term; see :mod:`sae_lens_ext.data.windows`)."""
        from sae_lens_ext.plugins import loss_terms

        known, options = loss_terms(), parse_options(self.loss_term_options)
        window = self.architecture_window()
        for spec in self.enabled_loss_terms():
            term_window = known[spec.name].batch_window
            if term_window is not None:
                window = max(window, term_window(lambda k, d: resolve_option(self, options, k, d)))
        return window

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
        """The architecture's own terms (with a coefficient or a warm-up) and ``loss_terms``."""
        from sae_lens_ext.plugins import loss_terms, unknown_loss_term

        specs = [s for s in self.builtin_loss_terms() if s.coefficient > 0 or s.warm_up_steps]
        extra = parse_loss_terms(self.loss_terms)
        known = loss_terms()
        for spec in [*specs, *extra]:
            if spec.name not in known:
                raise unknown_loss_term(spec.name)
        clash = {s.name for s in specs} & {s.name for s in extra}
        if clash:
            raise ValueError(
                f"loss_terms: {sorted(clash)} already enabled by this architecture's own fields"
            )
        return specs + extra


def evaluate_loss_terms(
    sae: Any,
    terms: Sequence[tuple[LossTermSpec, LossTerm]],
    step_input: TrainStepInput,
    feature_acts: torch.Tensor,
    hidden_pre: torch.Tensor,
    sae_out: torch.Tensor,
    *,
    options: Mapping[str, str],
    metrics: dict[str, Any],
    collectives: BatchCollectives | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted losses of the enabled ``terms`` for one step, ``{name}_loss`` each
    (coefficient from ``step_input.coefficients``, i.e. warmed up; else the spec's).

    Each term gets a :class:`~sae_lens_ext.training.loss_terms.LossContext` (its ``metrics`` is ``metrics``, its
    ``collectives`` is ``collectives``: the data-parallel reductions, local by default). A term that
    raises, or returns anything but a 0-dimensional floating-point tensor, stops the step
    with a :class:`~sae_lens_ext.plugins.PluginError` naming the term and its plugin (an
    error class of the core itself, such as a window check's ``BatchLayoutError``, which
    names its setting, passes through unchanged); the check reads only shapes and dtypes
    (no host-device sync). Whether a value is finite is
    the training guards' check (:mod:`sae_lens_ext.training.after_step`), on logging steps.
    """
    logged = is_logging_step(sae, step_input)
    if logged and not step_input.is_logging_step:
        step_input = dataclasses.replace(step_input, is_logging_step=True)
    ctx = LossContext(
        sae=sae,
        step_input=step_input,
        feature_acts=feature_acts,
        hidden_pre=hidden_pre,
        sae_out=sae_out,
        options=options,
        metrics=metrics,
        is_logging_step=logged,
        collectives=collectives or LOCAL_COLLECTIVES,
    )
    losses = {}
    for spec, term in terms:
        value = _term_value(term, ctx)
        coefficient = step_input.coefficients.get(spec.name, spec.coefficient)
        losses[spec.name + LOSS_SUFFIX] = coefficient * value
    return losses


def _term_value(term: LossTerm, ctx: LossContext) -> torch.Tensor:
    """``term.fn(ctx)``, checked; any failure names the term and its plugin."""
    from sae_lens_ext.plugins import PluginError

    try:
        value = term.fn(ctx)
    except Exception as exc:
        if isinstance(exc, PluginError) or _raised_by_the_core(exc):
            raise
        step = ctx.step_input.n_training_steps
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise _term_error(term, f"raised {detail} (training step {step})") from exc
    if not isinstance(value, torch.Tensor):
        raise _term_error(term, f"returned {type(value).__name__}; {_EXPECTED}")
    if value.dim() != 0:
        raise _term_error(term, f"returned a tensor of shape {tuple(value.shape)}; {_EXPECTED}")
    if not value.is_floating_point():
        raise _term_error(term, f"returned a {value.dtype} tensor; {_EXPECTED}")
    return value


def _raised_by_the_core(exc: Exception) -> bool:
    """An error class of sae-lens-ext's core (e.g. ``BatchLayoutError`` from a term's window
    check): it names the setting to change already, and passes through unchanged."""
    return type(exc).__module__.partition(".")[0] == __name__.partition(".")[0]


_EXPECTED = "a loss term returns a 0-dimensional floating-point tensor (e.g. x.mean())"


def _term_error(term: LossTerm, what: str) -> Exception:
    from sae_lens_ext.plugins import PluginError, owner_of

    owner = owner_of("loss_terms", term.name)
    by = owner.label() if owner is not None else "an unknown plugin"
    return PluginError(
        f"loss term {term.name!r} of {by} {what}",
        plugin=owner.name if owner is not None else "?",
        where=f"loss term {term.name!r}",
    )


T_CFG = TypeVar("T_CFG", bound=LossTermTrainingSAEConfig)
#: A checkpoint's file of :meth:`LossTermTrainingSAE.training_counts`.
COUNTS_FILENAME = "training_counts.json"


class LossTermsMixin(TrainingSAE[T_CFG]):
    """Plugin loss terms, resampling, after-step work and guards for a training SAE.

    Put it first among the bases of a class that also derives from an SAE-Lens training
    class (``class MyTwin(LossTermsMixin[MyCfg], StandardTrainingSAE)``): it wraps that
    class's ``calculate_aux_loss``, ``get_coefficients`` and ``training_forward_pass``.
    The config must derive from :class:`LossTermTrainingSAEConfig`.
    """

    def __init__(self, cfg: T_CFG, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        from sae_lens_ext.plugins import loss_terms

        registry = loss_terms()
        self._terms = [(spec, registry[spec.name]) for spec in cfg.enabled_loss_terms()]
        self._term_options = parse_options(cfg.loss_term_options)
        self._pending_resample: tuple[torch.Tensor, ResampleResult] | None = None
        self._step_metrics: dict[str, Any] = {}
        self.n_resampled = 0
        #: Served by the core's data-parallel layer (see :class:`BatchCollectives`).
        self.collectives: BatchCollectives = LOCAL_COLLECTIVES
        #: The run's number of optimizer steps, if a training loop said it.
        self.training_steps: int | None = None
        self._warned_length = False
        latent_parameters(self)  # a latent-indexed tensor left undeclared fails now

    @property
    def guard(self) -> TrainingGuard:
        """The guard watching this SAE's training (:func:`sae_lens_ext.training.after_step.driver_of`)."""
        return driver_of(self).guard

    # --- what the architecture computes -----------------------------------------------
    def architecture_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        """Coefficients of the architecture's own penalties: those of the SAE-Lens class
        this is mixed into."""
        # safe: the mixin precedes a concrete SAE-Lens class in the MRO of every class using it
        return super().get_coefficients()  # type: ignore[safe-super]

    def architecture_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The architecture's own auxiliary losses: those of the SAE-Lens class this is
        mixed into (a bare tensor is logged as ``aux_loss``)."""
        # safe: the mixin precedes a concrete SAE-Lens class in the MRO of every class using it
        losses = super().calculate_aux_loss(  # type: ignore[safe-super]
            step_input, feature_acts, hidden_pre, sae_out
        )
        return dict(losses) if isinstance(losses, dict) else {"aux_loss": losses}

    def batch_mean(self, value: torch.Tensor) -> torch.Tensor:
        """A per-batch statistic of this process's rows as that of the global batch
        (:meth:`BatchCollectives.batch_mean`; the identity in one process)."""
        return self.collectives.batch_mean(value)

    # --- the run's length ----------------------------------------------------------------
    def set_training_steps(self, steps: int) -> None:
        """Tell the SAE its run's number of optimizer steps, before the trainer is built
        (:func:`make_trainer` does; ``sae-lens train``, ``demo`` and ``sweep`` use it), so
        that warm-ups given as a fraction of the run are taken of it. SAE-Lens's own runners
        cannot tell an SAE the run's length: there, such warm-ups are that fraction of
        ``FALLBACK_TRAINING_STEPS`` steps, and building the trainer warns once."""
        if steps < 0:
            raise ValueError(f"set_training_steps: steps must be >= 0, got {steps}")
        self.training_steps = steps

    def warm_up_steps(self, spec: LossTermSpec) -> int:
        """A term's warm-up in steps: ``spec.warm_up_steps``, or ``spec.warm_up_fraction`` of
        the run (of ``FALLBACK_TRAINING_STEPS`` when the run's length is unknown)."""
        if spec.warm_up_fraction is None:
            return spec.warm_up_steps
        steps = FALLBACK_TRAINING_STEPS if self.training_steps is None else self.training_steps
        return round(spec.warm_up_fraction * steps)

    def _warn_unknown_length(self) -> None:
        fractions = [s for s, _ in self._terms if s.warm_up_fraction]
        if self.training_steps is not None or not fractions or self._warned_length:
            return
        self._warned_length = True
        terms = ", ".join(f"{s.name} over {self.warm_up_steps(s)}" for s in fractions)
        warnings.warn(
            f"{type(self).__name__}: nothing told the SAE its run's length (SAE-Lens's own "
            f"runners cannot), so warm-ups given as a fraction of the run are taken of "
            f"{FALLBACK_TRAINING_STEPS} steps ({terms} steps); set the *_warm_up_steps fields "
            "to choose, or train with sae-lens train, demo or sweep, which tell it",
            UserWarning,
            stacklevel=3,
        )

    # --- SAE-Lens interface -----------------------------------------------------------
    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        self._warn_unknown_length()
        return {
            **self.architecture_coefficients(),
            **{
                spec.name: TrainCoefficientConfig(spec.coefficient, self.warm_up_steps(spec))
                for spec, _ in self._terms
            },
        }

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        losses = dict(self.architecture_aux_loss(step_input, feature_acts, hidden_pre, sae_out))
        return losses | evaluate_loss_terms(
            self, self._terms, step_input, feature_acts, hidden_pre, sae_out,
            options=self._term_options, metrics=self._step_metrics,
            collectives=self.collectives,
        )  # fmt: skip

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """Upstream's forward pass (tensor work only, so that ``compile_sae`` compiles it
        in one piece) between this class's bookkeeping before and after it."""
        step_input = self.begin_step(step_input)
        output = super().training_forward_pass(step_input)
        self.end_step(step_input, output)
        return output

    @torch.compiler.disable
    def begin_step(self, step_input: TrainStepInput) -> TrainStepInput:
        """Python bookkeeping before a step (never compiled; an override that changes the
        step's input returns the new one, and stays ``torch.compiler.disable``d)."""
        if driver_of(self).is_waiting():  # after-step work asked for, but no optimizer step ran
            self.skip_after_step_work()
        self._step_metrics = {}
        return step_input

    @torch.compiler.disable
    def end_step(self, step_input: TrainStepInput, output: TrainStepOutput) -> None:
        """Python bookkeeping after a step's forward pass (never compiled): loss-term
        metrics, the guards under SAE-Lens's own runners, a periodic resample."""
        output.metrics.update(self._step_metrics)
        missing = [s.name for s, _ in self._terms if f"{s.name}_loss" not in output.losses]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__}: loss terms {missing} were not added to the loss: its "
                "training_forward_pass does not call calculate_aux_loss (upstream's "
                "TrainingSAE.training_forward_pass does); call it, or take no loss terms"
            )
        driver_of(self).observe_step(  # the guard, under SAE-Lens's own runners
            step_input.n_training_steps, output.loss, step_input.sae_in,
            output.feature_acts, output.losses,
        )  # fmt: skip
        self._maybe_schedule_resample(step_input, output)
        output.metrics.update(self.training_counts())  # a trace in every training log

    def training_counts(self) -> dict[str, int]:
        """Running counts of after-step work since training began, this step's included
        (in every step's metrics; kept in checkpoints, so a resumed run continues them)."""
        pending = self._pending_resample  # written right after this step's optimizer step
        return {"resampled_latents": self.n_resampled + (0 if pending is None else len(pending[0]))}

    def restore_training_counts(self, counts: dict[str, int]) -> None:
        self.n_resampled = counts.get("resampled_latents", 0)

    @override
    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        saved = super().save_model(path)  # checkpoints: also the counts
        (Path(path) / COUNTS_FILENAME).write_text(json.dumps(self.training_counts()))
        return saved

    @override
    def load_weights_from_checkpoint(self, checkpoint_path: Path | str) -> None:
        super().load_weights_from_checkpoint(checkpoint_path)
        counts = Path(checkpoint_path) / COUNTS_FILENAME
        if counts.is_file():
            self.restore_training_counts(json.loads(counts.read_text()))

    @override
    def save_inference_model(self, path: str | Any) -> Any:
        driver_of(self).check_before_save()  # trained here: never save an SAE that never fired
        return super().save_inference_model(path)

    # --- after the optimizer step ----------------------------------------------------------
    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """Work that needs the optimizer, run right after its step: write a pending
        resample and reset those rows' moments. Subclasses extend it; one that permutes
        latents returns the permutation (new latent ``j`` is old latent ``perm[j]``) so that
        the caller permutes the per-latent state it owns (the trainer's firing counters)."""
        self.apply_pending_resample(optimizer)
        return None

    def skip_after_step_work(self) -> None:
        """Pending after-step work found no optimizer step to follow (the SAE was stepped
        outside an optimizer that holds it): drop it, with a warning, rather than rewrite
        rows whose optimizer moments would then be wrong."""
        driver_of(self).cancel()
        if self._pending_resample is not None:
            self._pending_resample = None
            warnings.warn(
                f"{type(self).__name__}: a resample was dropped because no optimizer step "
                "followed it; call after_optimizer_step(optimizer) after each step",
                RuntimeWarning,
                stacklevel=3,
            )

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
        from sae_lens_ext.plugins import call_first

        # data-parallel: the resampler sees the global batch on every process (so their
        # random generators advance alike) and process 0's choice is applied everywhere
        request = ResampleRequest(
            sae=self,
            dead_latents=dead,
            sae_in=self.collectives.gather_rows(step_input.sae_in.detach()),
            sae_out=self.collectives.gather_rows(output.sae_out.detach()),
            step=step_input.n_training_steps,
        )
        result = self.collectives.from_main(call_first("resample_dead_latents", request=request))
        if result is None:
            return
        check_latent_values(self, dead.numel(), result.values, f"resampler {result.resampler!r}")
        self._pending_resample = (dead, result)
        request_after_step(self)

    @torch.no_grad()
    def apply_pending_resample(self, optimizer: torch.optim.Optimizer) -> None:
        """Write the chosen rows and reset their optimizer moments."""
        if self._pending_resample is None:
            return
        dead, result = self._pending_resample
        self._pending_resample = None
        write_latents(self, dead, result.values, optimizer)
        self.n_resampled += dead.numel()


class LossTermTrainingSAE(LossTermsMixin[T_CFG], PluginSAE[T_CFG], Generic[T_CFG]):
    """Base of a plugin architecture's *training* class, written from scratch.

    Subclass it with your training config (a :class:`LossTermTrainingSAEConfig`) and:

    - create ``b_enc`` and your other parameters in :meth:`initialize_weights` after
      ``super().initialize_weights()`` (upstream's creates ``W_enc``, ``W_dec``, ``b_dec``);
    - implement :meth:`encode_with_hidden_pre` (``(feature_acts, hidden_pre)``, through
      ``process_sae_in`` and the hook points), the encoder the inference class shares;
    - put the architecture's own penalties in :meth:`base_aux_loss` with their
      coefficients in :meth:`base_coefficients` (warm-ups through
      ``TrainCoefficientConfig``); plugin loss terms are added on top;
    - declare extra latent-indexed tensors in :meth:`latent_parameters` (as the inference
      class does), so resampling, sorting, optimizer surgery and folding move them;
    - extend :meth:`after_optimizer_step` (``super()`` first) for work that needs the
      optimizer, asking for it with :func:`~sae_lens_ext.training.after_step.request_after_step`.

    The config's ``get_inference_config_class()`` (by default the inference class
    registered under the same name) must repeat every field that changes what the SAE
    computes, so that the saved SAE computes what was trained.
    """

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
        """The architecture's own penalties (e.g. an L1 term), already weighted."""
        return {}

    @override
    def architecture_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return self.base_coefficients()

    @override
    def architecture_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return self.base_aux_loss(step_input, feature_acts, hidden_pre, sae_out)


def make_trainer(cfg: Any, sae: Any, data_provider: Any, **kwargs: Any) -> Any:
    """Upstream's ``SAETrainer(cfg=cfg, sae=sae, data_provider=..., **kwargs)``, after telling
    the SAE the run's length (``sae.set_training_steps(cfg.total_training_steps)``, if it has
    that method): the trainer reads the SAE's coefficient warm-ups when it is built."""
    from sae_lens.training.sae_trainer import SAETrainer

    if callable(getattr(sae, "set_training_steps", None)):
        sae.set_training_steps(cfg.total_training_steps)
    return SAETrainer(cfg=cfg, sae=sae, data_provider=data_provider, **kwargs)
