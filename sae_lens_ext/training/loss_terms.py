"""Loss terms: named, coefficient-weighted penalties that plugins add to a training SAE.

A training SAE evaluates its enabled terms with
:func:`~sae_lens_ext.training.sae.evaluate_loss_terms` (one call in its ``calculate_aux_loss``),
which checks what each term returns and names the term and its plugin in any error. A term learns whether the step is logged from
:attr:`LossContext.is_logging_step`; a training loop that logs steps of its own says so
with :func:`set_logging_step` before each step (the ``sae-lens`` loop does).

Light on purpose (no torch or sae_lens import at module level): plugin entry modules and
configs read it at start-up. It imports nothing of the plugin registry
(:mod:`sae_lens_ext.plugins`), which validates and serves the terms defined here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import torch
    from sae_lens.saes.sae import TrainStepInput

    from sae_lens_ext.training.sae import LossTermsMixin

#: A term ``name`` enters the step's losses (and the logs) as ``name + LOSS_SUFFIX``.
LOSS_SUFFIX = "_loss"
_LOGGING_STEP_ATTRIBUTE = "_sae_lens_ext_logging_step"

T_OBJECT = TypeVar("T_OBJECT")


class BatchCollectives(Protocol):
    """Reductions over the processes that each hold a block of the global batch.

    The core's data-parallel layer serves an implementation over ``torch.distributed``
    (``sae-lens train`` / ``demo`` under ``torchrun``); everywhere else (one process,
    SAE-Lens's own runners) :class:`LocalCollectives` returns its input. Every process
    calls each method at the same point of the same step.
    """

    processes: int

    def batch_mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value``, a mean over this process's rows, as the mean over the global batch
        (the mean over processes: they hold equal blocks). May work in place."""
        ...

    def gather_rows(self, value: torch.Tensor) -> torch.Tensor:
        """Every process's ``value`` stacked along dim 0 (process 0 first)."""
        ...

    def from_main(self, obj: T_OBJECT) -> T_OBJECT:
        """Process 0's ``obj`` on every process (tensors inside: on the CPU)."""
        ...


class LocalCollectives:
    """One process: every reduction returns its input."""

    processes = 1

    def batch_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def gather_rows(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def from_main(self, obj: T_OBJECT) -> T_OBJECT:
        return obj


LOCAL_COLLECTIVES = LocalCollectives()


@dataclass
class LossContext:
    """Everything a loss term may look at during one training step.

    Attributes:
        sae: the training SAE (any class with :class:`~sae_lens_ext.training.sae.LossTermsMixin`:
            a plugin architecture or a twin of an upstream one).
        step_input: SAE-Lens's ``TrainStepInput`` (``sae_in``, ``coefficients``,
            ``dead_neuron_mask``, ``n_training_steps``; its ``is_logging_step`` is this
            context's).
        feature_acts: this step's codes, ``(rows, d_sae)``.
        hidden_pre: the pre-activations ``encode_with_hidden_pre`` returned.
        sae_out: the reconstruction.
        options: the SAE's ``loss_term_options``, parsed (read them with :meth:`option`).
        metrics: values to log, ``name -> scalar tensor or number`` (merged into
            ``TrainStepOutput.metrics``): they reach ``training_log.jsonl``, the progress
            line and wandb on every step that logs.
        is_logging_step: whether this step's values are logged (``sae-lens``: the steps
            that write ``training_log.jsonl`` or a progress line, and wandb's; upstream's
            runner: its wandb steps). Compute costly metrics only then; a cheap metric may
            be set on every step.
        collectives: reductions over data-parallel processes (:meth:`batch_mean`).
    """

    sae: LossTermsMixin[Any]
    step_input: TrainStepInput
    feature_acts: torch.Tensor
    hidden_pre: torch.Tensor
    sae_out: torch.Tensor
    options: Mapping[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    is_logging_step: bool = False
    collectives: BatchCollectives = field(default_factory=lambda: LOCAL_COLLECTIVES)

    def batch_mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value``, a mean over this step's rows, as the mean over the global batch:
        the identity in one process, an all-reduce over data-parallel processes. Use it
        for any batch statistic a term computes that is not a plain mean of the loss
        (whose gradients the core averages anyway)."""
        return self.collectives.batch_mean(value)

    def option(self, key: str, default: Any) -> Any:
        """A term setting: the SAE config field ``key`` if it has one, else
        ``loss_term_options`` (``"key=value,..."``, converted to ``default``'s type),
        else ``default``."""
        return resolve_option(self.sae.cfg, self.options, key, default)


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def convert_option(key: str, raw: str, default: Any) -> Any:
    """``raw`` (a ``loss_term_options`` value) as ``default``'s type; a bad value raises
    a ValueError naming the key."""
    if default is None or isinstance(default, str):
        return raw
    if isinstance(default, bool):
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
        raise ValueError(f"loss_term_options: {key}={raw!r} is not a boolean (true/false)")
    try:
        return type(default)(raw)
    except ValueError:
        raise ValueError(
            f"loss_term_options: {key}={raw!r} is not a valid {type(default).__name__}"
        ) from None


def resolve_option(cfg: Any, options: Mapping[str, str], key: str, default: Any) -> Any:
    """The config field ``key`` if ``cfg`` has one, else ``options[key]`` converted to
    ``default``'s type, else ``default`` (what :meth:`LossContext.option` returns)."""
    if hasattr(cfg, key):
        return getattr(cfg, key)
    if key in options:
        return convert_option(key, options[key], default)
    return default


@dataclass(frozen=True)
class LossTerm:
    """A named penalty. ``fn(ctx)`` returns the *unweighted* scalar; the SAE
    multiplies it by the term's (possibly warming-up) coefficient and logs it as
    ``<name>_loss``."""

    name: str
    fn: Callable[[LossContext], torch.Tensor]
    description: str = ""
    options: tuple[str, ...] = ()
    """Settings ``fn`` reads with ``ctx.option``; other ``loss_term_options`` keys are refused."""
    batch_window: Callable[[Callable[[str, Any], Any]], int] | None = None
    """If the term needs consecutive positions together in a batch: given the option
    lookup ``option(key, default)``, the number of positions (see :mod:`sae_lens_ext.data.windows`)."""
    sparse_aware: bool = False
    """``fn`` also works on a sparse step, where ``ctx.feature_acts`` may be a sparse COO tensor
    whose codes :func:`sae_lens_ext.training.sparse.codes_of` gives (it reads them through those). A
    term that leaves it False gets a dense, differentiable ``feature_acts`` on sparse steps
    too, at the cost of writing it (see :mod:`sae_lens_ext.training.sparse`)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"loss term name {self.name!r}: use lower_snake_case")


@dataclass(frozen=True)
class LossTermSpec:
    """One enabled term: name, coefficient and warm-up (steps, or a fraction of the run)."""

    name: str
    coefficient: float
    warm_up_steps: int = 0
    warm_up_fraction: float | None = None
    """If set, the warm-up is this fraction of the run's steps
    (:meth:`~sae_lens_ext.training.sae.LossTermTrainingSAE.warm_up_steps`) and ``warm_up_steps``
    is not used."""

    def __post_init__(self) -> None:
        fraction = self.warm_up_fraction
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(
                f"loss term {self.name!r}: the warm-up fraction must be in [0, 1], got {fraction}"
            )


_SPEC = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(?:=\s*([^@\s]+))?\s*(?:@\s*(\S+))?\s*$")


def parse_loss_terms(spec: str, field_name: str = "loss_terms") -> list[LossTermSpec]:
    """Parse ``"name=coef@warmup, other=coef"`` (coefficient defaults to 1, warm-up to 0).
    The warm-up is in steps (``@500``) or a share of the run (``@50%``)."""
    out: list[LossTermSpec] = []
    hint = "write name=coefficient@warm_up_steps (or @P% of the run)"
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = _SPEC.match(part)
        if m is None:
            raise ValueError(f"{field_name}: cannot parse {part!r}; {hint}")
        name, coef_s, warm_s = m.groups()
        warm, fraction = 0, None
        try:
            coef = float(coef_s) if coef_s is not None else 1.0
            if warm_s is not None and warm_s.endswith("%"):
                fraction = float(warm_s[:-1]) / 100
            elif warm_s is not None:
                warm = int(warm_s)
        except ValueError:
            raise ValueError(f"{field_name}: bad number in {part!r}; {hint}") from None
        if not coef >= 0:
            raise ValueError(f"{field_name}: coefficient of {name!r} must be >= 0, got {coef}")
        if warm < 0 or (fraction is not None and not 0 <= fraction <= 1):
            raise ValueError(
                f"{field_name}: warm-up of {name!r} must be >= 0 steps or 0-100%, got {warm_s}"
            )
        if any(s.name == name for s in out):
            raise ValueError(f"{field_name}: {name!r} is given twice")
        out.append(LossTermSpec(name, coef, warm, fraction))
    return out


def parse_options(spec: str, field_name: str = "loss_term_options") -> dict[str, str]:
    """Parse ``"key=value,key2=value2"``."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{field_name}: cannot parse {part!r}; write key=value")
        out[key.strip()] = value.strip()
    return out


def set_logging_step(sae: Any, logging: bool) -> None:
    """Say whether ``sae``'s next training step is logged, for a training loop whose logging
    steps are not upstream's wandb steps (``TrainStepInput.is_logging_step``); the flag
    holds until changed. The ``sae-lens`` loop calls it before every step."""
    setattr(sae, _LOGGING_STEP_ATTRIBUTE, bool(logging))


def is_logging_step(sae: Any, step_input: TrainStepInput) -> bool:
    """Whether this step of ``sae`` is logged: upstream's flag, or :func:`set_logging_step`."""
    return bool(step_input.is_logging_step or getattr(sae, _LOGGING_STEP_ATTRIBUTE, False))
