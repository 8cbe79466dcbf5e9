"""Guards that turn a training run that does not work into an error naming the fix.

:class:`TrainingGuard` watches every step without a host-device sync (device-side
counters only) and checks them when asked (on logging steps and at the end):

- a non-finite loss, naming the first step where it appeared and what was at fault: that
  step's input activations, else the losses that were not finite, a plugin's loss term
  named with its plugin (the one non-finite check of a training step);
- an SAE that stops firing: no latent active on a whole batch for ``max_silent_steps``
  consecutive steps (L0 = 0: it reconstructs only ``b_dec``);
- a run that trained 0 steps, or in which no latent ever fired.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: At most this many loss names are told apart (bits of one int64 on the device).
MAX_LOSS_NAMES = 62
_STATE = ("first_bad_step", "bad_input", "silent", "ever_fired", "bad_losses")

SILENT_FIX = (
    "lower the sparsity coefficient (l1_coefficient) or lr, or normalise the activations "
    "(--normalize_activations expected_average_only_in)"
)


class TrainingGuard:
    """Device-side watch of a training run; :meth:`check` raises what it found."""

    def __init__(self, max_silent_steps: int = 200) -> None:
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
        from sae_lens_ext import distributed

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
    from sae_lens_ext.loss_terms import LOSS_SUFFIX
    from sae_lens_ext.plugins import LossTermNotFinite, owner_of

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
