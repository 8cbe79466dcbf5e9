"""What follows each optimizer step of a training SAE: the one after-step driver and guard.

:class:`AfterStepDriver` (one per training SAE, :func:`driver_of`) runs two things after
each optimizer step, for ``sae-lens`` commands and under SAE-Lens's own runners alike:

- the architecture's after-step work, with the optimizer in hand
  (``sae.after_optimizer_step(optimizer)``: a resample chosen during the step, a periodic
  permutation such as a sort; the rows it rewrites need fresh optimizer moments);
- the :class:`TrainingGuard`, which watches every step without a host-device sync
  (device-side counters only) and checks them when asked:

  - a non-finite loss, naming the first step where it appeared and what was at fault: that
    step's input activations, else the losses that were not finite, a plugin's loss term
    named with its plugin (the one non-finite check of a training step);
  - an SAE that stops firing: no latent active on a whole batch for ``max_silent_steps``
    consecutive steps (L0 = 0: it reconstructs only ``b_dec``);
  - a run that trained 0 steps, or in which no latent ever fired.

Who calls the driver:

- the core's training loop (:class:`sae_lens_ext.run.loop.TrainingLoop`) takes it with
  :func:`drive_from_loop` and calls :meth:`AfterStepDriver.after_optimizer_step` and
  :meth:`AfterStepDriver.observe` after each step, checking the guard on logging steps;
- under SAE-Lens's own runners (``SAETrainer.fit``, which know nothing of it) a training
  SAE (:class:`~sae_lens_ext.training.sae.LossTermsMixin`) feeds the guard from its own step
  (:meth:`AfterStepDriver.observe_step`, checked every :data:`GUARD_CHECK_EVERY` steps)
  and asks for its after-step work with :func:`request_after_step`. Those runners call
  ``optimizer.step()`` inside ``SAETrainer`` with no callback after it, and the work must
  come after the optimizer step and before the next forward pass: a process-wide torch
  optimizer step post-hook (registered here, on the first request, and acting only for
  an optimizer that holds every parameter of a waiting SAE) is the one public seam left
  there.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

#: ``max_silent_steps``'s default: the one place it is written.
DEFAULT_MAX_SILENT_STEPS = 200
#: Under SAE-Lens's own runners, the guard is checked every this many steps.
GUARD_CHECK_EVERY = 100
#: At most this many loss names are told apart (bits of one int64 on the device).
MAX_LOSS_NAMES = 62
_STATE = ("first_bad_step", "bad_input", "silent", "ever_fired", "bad_losses")

SILENT_FIX = (
    "lower the sparsity coefficient (l1_coefficient) or lr, or normalise the activations "
    "(--normalize_activations expected_average_only_in)"
)


class TrainingGuard:
    """Device-side watch of a training run; :meth:`check` raises what it found."""

    def __init__(self, max_silent_steps: int = DEFAULT_MAX_SILENT_STEPS) -> None:
        self.max_silent_steps = max_silent_steps
        self.steps = 0
        self.last_step = -1
        self._state: torch.Tensor | None = None  # see _STATE
        self._loss_names: list[str] = []  # bit i of bad_losses: self._loss_names[i]
        self._loss_bits: dict[tuple[Any, ...], torch.Tensor] = {}

    def observe(
        self,
        step: int,
        loss: torch.Tensor,
        sae_in: torch.Tensor,
        feature_acts: torch.Tensor | None = None,
        fired: torch.Tensor | None = None,
        losses: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Record training step ``step`` (device ops only). ``fired`` (a bool scalar: some
        latent fired on this batch), when the caller has it, saves reading ``feature_acts``.
        ``losses`` (the step's named losses, ``TrainStepOutput.losses``) lets :meth:`check`
        name the losses that were not finite."""
        with torch.no_grad():
            if self._state is None:
                self._state = torch.tensor([-1, 0, 0, 0, 0], dtype=torch.long, device=loss.device)
            first_bad, bad_input, silent, ever, bad_losses = self._state.unbind()
            new_bad = ~torch.isfinite(loss.detach()) & (first_bad < 0)
            if fired is None:
                if feature_acts is None:
                    raise ValueError("observe needs feature_acts or fired")
                acts = feature_acts.detach()
                fired = (acts.coalesce().values() if acts.is_sparse else acts).any()
            fired = fired.to(self._state.device)
            update = torch.stack(
                [
                    torch.where(new_bad, torch.full_like(first_bad, step), first_bad),
                    torch.where(new_bad, (~torch.isfinite(sae_in).all()).long(), bad_input),
                    torch.where(fired, torch.zeros_like(silent), silent + 1),
                    ever | fired.long(),
                    torch.where(new_bad, self._non_finite_bits(losses, bad_losses), bad_losses),
                ]
            )
            self._state.copy_(update)
        self.steps += 1
        self.last_step = step

    def _non_finite_bits(
        self, losses: Mapping[str, torch.Tensor] | None, like: torch.Tensor
    ) -> torch.Tensor:
        """Bit ``i`` set where loss ``self._loss_names[i]`` is not finite (device ops only;
        the bit weights are built once per set of names)."""
        scalars = {
            name: value
            for name, value in (losses or {}).items()
            if isinstance(value, torch.Tensor) and value.numel() == 1
        }
        for name in scalars:
            if name not in self._loss_names and len(self._loss_names) < MAX_LOSS_NAMES:
                self._loss_names.append(name)
        named = [(n, v) for n, v in scalars.items() if n in self._loss_names]
        if not named:
            return torch.zeros_like(like)
        key = (like.device, *(n for n, _ in named))
        bits = self._loss_bits.get(key)
        if bits is None:
            bits = self._loss_bits[key] = torch.tensor(
                [1 << self._loss_names.index(n) for n, _ in named], device=like.device
            )
        values = [v if v.dim() == 0 else v.reshape(()) for _, v in named]
        if len({v.dtype for v in values}) > 1:
            values = [v.float() for v in values]
        return bits.masked_fill(torch.isfinite(torch.stack(values)), 0).sum()

    def synchronize(self) -> None:
        """Under torchrun: make every rank's watch that of the global batch (the first
        non-finite step of any rank, silent only while every rank's block was silent, fired
        if any rank's did), so that :meth:`check` raises on all ranks or on none."""
        from sae_lens_ext.training import distributed

        if self._state is None or not distributed.is_distributed():
            return
        with torch.no_grad():
            first_bad, bad_input, silent, ever, bad_losses = self._state.unbind()
            never = torch.iinfo(torch.long).max
            packed = torch.stack(
                [torch.where(first_bad < 0, never, first_bad), silent, -bad_input, -ever]
            )
            distributed.all_reduce_min_(packed)
            first = torch.where(packed[0] == never, -1, packed[0])
            # the bad losses of that step, from a rank that saw it (rank-local names: the
            # ranks run the same SAE, so they meet the same losses in the same order)
            bad = torch.where(first_bad == first, bad_losses, 0)
            distributed.all_reduce_max_(bad)
            self._state.copy_(torch.stack([first, packed[1], -packed[2], -packed[3], bad]))

    def check(self) -> None:
        """Raise ``FloatingPointError`` / ``RuntimeError`` for what :meth:`observe` saw
        (one host-device sync)."""
        if self._state is None:
            return
        first_bad, bad_input, silent, _, bad_losses = (int(v) for v in self._state.tolist())
        if first_bad >= 0 and bad_input:
            raise FloatingPointError(
                f"training step {first_bad}: loss is not finite because the input activations "
                "contain NaN/inf; check the model, hook and dtype"
            )
        if first_bad >= 0:
            names = [n for i, n in enumerate(self._loss_names) if bad_losses >> i & 1]
            raise non_finite_loss_error(first_bad, names)
        if self.max_silent_steps and silent >= self.max_silent_steps:
            raise RuntimeError(
                f"training step {self.last_step}: no latent has fired for {silent} "
                f"steps (L0 = 0, the SAE reconstructs only b_dec); {SILENT_FIX}"
            )

    def check_finished(self, trained_steps: int) -> None:
        """At the end of a run: it trained at least one step and some latent fired."""
        self.check()
        if trained_steps == 0:
            raise RuntimeError(
                "the run trained 0 steps; raise training_tokens (or --samples) to at least "
                "one batch"
            )
        if self._state is not None and int(self._state[3]) == 0:
            raise RuntimeError(
                f"no latent fired in any of the {self.steps} training steps (L0 = 0); {SILENT_FIX}"
            )

    def state_dict(self) -> dict[str, Any]:
        state = None if self._state is None else self._state.cpu()
        return {
            "steps": self.steps,
            "last_step": self.last_step,
            "state": state,
            "loss_names": list(self._loss_names),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.last_step, self._state = state["steps"], state["last_step"], state["state"]
        self._loss_names = list(state.get("loss_names", []))
        self._loss_bits = {}
        if self._state is not None and self._state.numel() < len(_STATE):  # an older checkpoint
            padding = self._state.new_zeros(len(_STATE) - self._state.numel())
            self._state = torch.cat([self._state, padding])


def non_finite_loss_error(step: int, names: list[str]) -> FloatingPointError:
    """The error for a loss that stopped being finite at ``step``, ``names`` the losses that
    were not: a plugin's loss term among them is named with its plugin."""
    from sae_lens_ext.plugins import LossTermNotFinite, owner_of
    from sae_lens_ext.training.loss_terms import LOSS_SUFFIX

    for name in names:
        owner = owner_of("loss_terms", name.removesuffix(LOSS_SUFFIX))
        if name.endswith(LOSS_SUFFIX) and owner is not None:
            term = name.removesuffix(LOSS_SUFFIX)
            fix = (
                "lower lr or its coefficient"
                if owner.builtin
                else "lower its coefficient, or leave it out of loss_terms and tell the "
                "plugin's author"
            )
            return LossTermNotFinite(
                f"training step {step}: loss term {term!r} of {owner.label()} is not finite "
                f"(NaN or inf); {fix}",
                plugin=owner.name,
                where=f"loss term {term!r}",
            )
    which = f" ({', '.join(names)}: NaN or inf)" if names else ""
    return FloatingPointError(
        f"training step {step}: loss is not finite{which}; lower lr or the loss coefficients"
    )


# ---------------------------------------------------------------------------------------
# The after-step driver
# ---------------------------------------------------------------------------------------
@runtime_checkable
class AfterOptimizerStep(Protocol):
    """A training SAE with work that needs the optimizer right after each of its steps."""

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """Do it (resampling, a periodic permutation); return the permutation of the
        latents if one was applied (new latent ``j`` is old latent ``perm[j]``), so that the
        caller permutes the per-latent state it owns (the trainer's firing counters)."""
        ...


class AfterStepDriver:
    """The after-step work and the guard of one training SAE (see the module docstring).

    Attributes:
        guard: the SAE's one :class:`TrainingGuard`.
        by_loop: a training loop drives this SAE (it runs the work and feeds the guard
            itself); ``False`` under SAE-Lens's own runners.
    """

    def __init__(self, sae: Any, max_silent_steps: int = DEFAULT_MAX_SILENT_STEPS) -> None:
        self._sae = weakref.ref(sae)
        self.guard = TrainingGuard(max_silent_steps)
        self.by_loop = False

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """Run the SAE's after-step work now, if it has any (:class:`AfterOptimizerStep`);
        return the permutation of the latents it applied, if one."""
        sae = self._sae()
        if sae is None:
            return None
        _waiting.discard(sae)
        work = getattr(sae, "after_optimizer_step", None)
        return work(optimizer) if work is not None else None

    def request(self) -> None:
        """The SAE has after-step work pending: under SAE-Lens's own runners, run it after
        the next step of an optimizer that holds all its parameters (a loop runs it after
        every step anyway)."""
        sae = self._sae()
        if self.by_loop or sae is None:
            return
        _install_optimizer_hook()
        _waiting.add(sae)

    def is_waiting(self) -> bool:
        """Whether requested work still waits for an optimizer step (none ran since)."""
        return self._sae() in _waiting

    def cancel(self) -> None:
        """Forget requested work (it is skipped)."""
        sae = self._sae()
        if sae is not None:
            _waiting.discard(sae)

    def observe_step(self, step: int, loss: torch.Tensor, sae_in: torch.Tensor,
                     feature_acts: torch.Tensor, losses: Mapping[str, torch.Tensor]) -> None:  # fmt: skip
        """The SAE's own view of a step it computed: under SAE-Lens's own runners the guard
        watches it (checked every :data:`GUARD_CHECK_EVERY` steps); a loop observes the
        step itself."""
        if self.by_loop:
            return
        self.guard.observe(step, loss, sae_in, feature_acts, losses=losses)
        if (step + 1) % GUARD_CHECK_EVERY == 0:
            self.guard.check()

    def check_before_save(self) -> None:
        """Under SAE-Lens's own runners: refuse to save an SAE that trained here and never
        fired (a loop checks at its end)."""
        if not self.by_loop and self.guard.steps:
            self.guard.check_finished(self.guard.steps)


_drivers: weakref.WeakKeyDictionary[Any, AfterStepDriver] = weakref.WeakKeyDictionary()
_waiting: weakref.WeakSet[Any] = weakref.WeakSet()
_hook_handle: Any = None


def _max_silent_steps(sae: Any) -> int:
    return getattr(getattr(sae, "cfg", None), "max_silent_steps", DEFAULT_MAX_SILENT_STEPS)


def driver_of(sae: Any) -> AfterStepDriver:
    """The SAE's after-step driver (made on first use, from ``sae.cfg.max_silent_steps``)."""
    driver = _drivers.get(sae)
    if driver is None:
        driver = _drivers[sae] = AfterStepDriver(sae, _max_silent_steps(sae))
    return driver


def drive_from_loop(sae: Any) -> AfterStepDriver:
    """A fresh driver for a training loop that runs the SAE's after-step work and feeds
    its guard itself (a new run: a new watch); the process-wide hook leaves it alone."""
    _waiting.discard(sae)
    driver = _drivers[sae] = AfterStepDriver(sae, _max_silent_steps(sae))
    driver.by_loop = True
    return driver


def request_after_step(sae: Any) -> None:
    """Ask for ``sae.after_optimizer_step(optimizer)`` after the next optimizer step of an
    optimizer holding its parameters (no-op when a training loop drives it)."""
    driver_of(sae).request()


def _install_optimizer_hook() -> None:
    global _hook_handle
    if _hook_handle is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _hook_handle = register_optimizer_step_post_hook(_after_optimizer_step)


def _after_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    """The process-wide post-hook: the after-step work of every waiting SAE whose
    parameters this optimizer holds."""
    if not _waiting:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for sae in list(_waiting):
        if all(id(p) in held for p in sae.parameters()):
            driver_of(sae).after_optimizer_step(optimizer)
