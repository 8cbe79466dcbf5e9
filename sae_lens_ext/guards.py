"""Guards that turn a training run that does not work into an error naming the fix.

:class:`TrainingGuard` watches every step without a host-device sync (device-side
counters only) and checks them when asked (on logging steps and at the end):

- a non-finite loss, naming the first step where it appeared and whether that step's
  input activations were at fault (the one non-finite check of a training step);
- an SAE that stops firing: no latent active on a whole batch for ``max_silent_steps``
  consecutive steps (L0 = 0: it reconstructs only ``b_dec``);
- a run that trained 0 steps, or in which no latent ever fired.
"""

from __future__ import annotations

from typing import Any

import torch

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
        self._state: torch.Tensor | None = None  # first_bad_step, bad_input, silent, ever_fired

    def observe(
        self,
        step: int,
        loss: torch.Tensor,
        sae_in: torch.Tensor,
        feature_acts: torch.Tensor | None = None,
        fired: torch.Tensor | None = None,
    ) -> None:
        """Record training step ``step`` (device ops only). ``fired`` (a bool scalar: some
        latent fired on this batch), when the caller has it, saves reading ``feature_acts``."""
        with torch.no_grad():
            if self._state is None:
                self._state = torch.tensor([-1, 0, 0, 0], dtype=torch.long, device=loss.device)
            first_bad, bad_input, silent, ever = self._state.unbind()
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
                ]
            )
            self._state.copy_(update)
        self.steps += 1
        self.last_step = step

    def synchronize(self) -> None:
        """Under torchrun: make every rank's watch that of the global batch (the first
        non-finite step of any rank, silent only while every rank's block was silent, fired
        if any rank's did), so that :meth:`check` raises on all ranks or on none."""
        from sae_lens_ext import distributed

        if self._state is None or not distributed.is_distributed():
            return
        with torch.no_grad():
            first_bad, bad_input, silent, ever = self._state.unbind()
            never = torch.iinfo(torch.long).max
            packed = torch.stack(
                [torch.where(first_bad < 0, never, first_bad), silent, -bad_input, -ever]
            )
            distributed.all_reduce_min_(packed)
            first = torch.where(packed[0] == never, -1, packed[0])
            self._state.copy_(torch.stack([first, packed[1], -packed[2], -packed[3]]))

    def check(self) -> None:
        """Raise ``FloatingPointError`` / ``RuntimeError`` for what :meth:`observe` saw
        (one host-device sync)."""
        if self._state is None:
            return
        first_bad, bad_input, silent, _ = (int(v) for v in self._state.tolist())
        if first_bad >= 0:
            raise FloatingPointError(
                f"training step {first_bad}: loss is not finite"
                + (
                    " because the input activations contain NaN/inf; check the model, hook "
                    "and dtype"
                    if bad_input
                    else "; lower lr or the loss coefficients"
                )
            )
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
        return {"steps": self.steps, "last_step": self.last_step, "state": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.last_step, self._state = state["steps"], state["last_step"], state["state"]
