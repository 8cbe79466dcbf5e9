"""Which path a training step takes (:class:`SparseStepSwitch`, the ``sparse_step`` config
field) and the wiring of the sparse step into a
:class:`~sae_lens_ext.training.sae.LossTermTrainingSAE` (:class:`SparseStepMixin`)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from sae_lens_ext.training.sparse.codes import (
    Activation,
    AffineMap,
    SparseCodes,
    attach_codes,
    codes_of,
    decode_sparse,
    encode_sparse,
)

SparseStepMode = Literal["auto", "dense", "sparse"]
MODES: tuple[str, ...] = ("auto", "dense", "sparse")

#: ``sparse_step="auto"`` takes the sparse path while the measured code density (active
#: entries / (rows x d_sae)) is below the threshold of the device type the step runs on:
#: the crossover ``benchmarks/step_benchmark.py`` measured there (docs/benchmarks-speed.md),
#: with a margin. CPU, d_in 768 x d_sae 16,384 x batch 4,096: the sparse step stops paying
#: at a density of about 9 % in fp32 and 4.5 % under bf16 autocast; 2 % leaves it at most
#: 0.6x the dense step's time in both. A device type without one (CUDA: not measured yet;
#: ``gpu_speed.sh`` measures it) keeps the dense step in auto mode; ``sparse_step="sparse"``
#: forces it.
DENSITY_THRESHOLDS: dict[str, float] = {"cpu": 0.02}
#: ... and goes back to the dense path above ``HYSTERESIS`` times it.
HYSTERESIS = 1.5
#: ... and stays dense for steps smaller than this (rows x ``d_in`` x ``d_sae``, one dense
#: product's multiply-adds), where the sparse step's fixed costs outweigh what it saves
#: (measured on CPU: break-even at batch 1024 x ``d_in`` 64 x ``d_sae`` 512).
MIN_PRODUCT = 2**25
#: On dense steps the density is measured every this many steps.
CHECK_EVERY = 10
#: A checkpoint's file of :meth:`SparseStepSwitch.state_dict`.
SWITCH_STATE_FILENAME = "sparse_step_state.json"

# --- choosing the path -----------------------------------------------------------------------


class _DeviceCount:
    """A count computed on the device, read on the host once it is there: on the CPU at
    once; on CUDA through a pinned buffer and an event (no wait)."""

    def __init__(self, count: torch.Tensor, size: int) -> None:
        self.size = size
        if count.device.type == "cuda":
            self.host = torch.empty((), dtype=count.dtype, pin_memory=True)
            self.host.copy_(count, non_blocking=True)
            self.event: Any = torch.cuda.Event()
            self.event.record()
        else:
            self.host, self.event = count, None

    def density(self) -> float | None:
        """The density if it has arrived, else None."""
        if self.event is not None and not self.event.query():
            return None
        return float(self.host) / max(self.size, 1)


class SparseStepSwitch:
    """Chooses each step's path: ``mode`` ``"dense"`` or ``"sparse"`` always (sparse only
    where the SAE allows it), ``"auto"`` sparse while the measured code density is below
    ``threshold``, back to dense above ``threshold * HYSTERESIS``, and dense for steps whose
    dense product (rows x ``d_in`` x ``d_sae``) is below ``min_product``. Sparse steps
    measure density for free (the number of entries); dense steps every ``check_every``
    steps."""

    def __init__(
        self,
        mode: str,
        threshold: float | None = None,
        check_every: int = CHECK_EVERY,
        unsupported: str | None = None,
        owner: str = "this SAE",
        d_in: int = 1,
        min_product: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"sparse_step must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.check_every = mode, check_every
        self._threshold = threshold
        self.device_type = "cpu"  # of the last step observed
        self.unsupported, self.owner = unsupported, owner
        self.d_in = d_in
        self.min_product = MIN_PRODUCT if min_product is None else min_product
        self.product = 0  # the last step's rows x d_in x d_sae
        self._said = False
        self.sparse = False
        self.density: float | None = None
        self.switches = 0
        self._pending: _DeviceCount | None = None

    @property
    def threshold(self) -> float | None:
        """The density below which auto goes sparse (None: it stays dense on this device)."""
        if self._threshold is not None:
            return self._threshold
        return DENSITY_THRESHOLDS.get(self.device_type)

    def choose(self) -> bool:
        """This step's path: True for sparse (Python state only: no read of a device value)."""
        if self._pending is not None:
            density = self._pending.density()
            if density is not None:
                self.density, self._pending = density, None
        if self.unsupported is not None:
            self._say_unsupported()
            sparse = False
        elif self.mode == "dense":
            sparse = False
        elif self.mode == "sparse":
            sparse = True
        elif not self._worth_it():
            sparse = False
        elif self.sparse:
            sparse = self.density <= self.threshold * HYSTERESIS  # type: ignore[operator]
        else:
            sparse = self.density < self.threshold  # type: ignore[operator]
        self.switches += sparse != self.sparse
        self.sparse = sparse
        return sparse

    def _say_unsupported(self) -> None:
        """Once: asked for the sparse step (or, in auto mode, codes sparse enough for it)."""
        wanted = self.mode == "sparse" or (
            self.mode == "auto" and self._worth_it() and self.density < self.threshold  # type: ignore[operator]
        )
        if wanted and not self._said:
            self._said = True
            density = "" if self.density is None else f" (code density {self.density:.2%})"
            warnings.warn(
                f"{self.owner}: every training step is dense{density}: {self.unsupported}",
                UserWarning,
                stacklevel=4,
            )

    def _worth_it(self) -> bool:
        """Auto mode may go sparse: a density measured, a threshold for this device, a step
        big enough."""
        return (
            self.density is not None
            and self.threshold is not None
            and self.product >= self.min_product
        )

    def observe_codes(self, codes: SparseCodes) -> None:
        """A sparse step's density: its number of entries (a host value)."""
        self.density = codes.density
        self.product = codes.n_rows * codes.n_latents * self.d_in
        self.device_type = codes.values.device.type

    def observe_dense(self, feature_acts: torch.Tensor, step: int) -> None:
        """A dense step's codes: counted every ``check_every`` steps (auto mode only)."""
        if self.mode != "auto" or self._pending is not None or self._said:
            return
        if step % self.check_every:
            return
        with torch.no_grad():
            acts = feature_acts.detach()
            count = torch.count_nonzero(acts)
        self._pending = _DeviceCount(count, acts.numel())
        self.product = acts.numel() * self.d_in
        self.device_type = acts.device.type

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to take the same paths and log the same densities (a
        density still on its way from the device is waited for: checkpoints only)."""
        pending = self._pending
        if pending is not None:
            if pending.event is not None:
                pending.event.synchronize()
            self.density, self._pending = pending.density(), None
        return {
            "sparse": self.sparse,
            "density": self.density,
            "product": self.product,
            "device_type": self.device_type,
            "switches": self.switches,
            "said": self._said,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sparse, self.density = bool(state["sparse"]), state["density"]
        self.product, self.device_type = int(state["product"]), str(state["device_type"])
        self.switches, self._said = int(state["switches"]), bool(state["said"])
        self._pending = None

    def metrics(self, sparse: bool) -> dict[str, float]:
        """Host values for the step's log: the path taken (``sparse``: 1, dense: 0) and the
        last measured code density."""
        out = {"sparse_step": float(sparse)}
        if self.density is not None:
            out["code_density"] = self.density
        return out


def save_switch_state(
    switch: SparseStepSwitch, path: str | Path, extra: dict[str, Any] | None = None
) -> None:
    """Write ``switch``'s state (and ``extra``) into a checkpoint folder."""
    state = {**switch.state_dict(), **(extra or {})}
    (Path(path) / SWITCH_STATE_FILENAME).write_text(json.dumps(state))


def load_switch_state(switch: SparseStepSwitch, path: str | Path) -> dict[str, Any] | None:
    """Restore ``switch`` from a checkpoint folder written by :func:`save_switch_state`;
    the whole saved dict (None: the folder has none, as checkpoints from before it)."""
    file = Path(path) / SWITCH_STATE_FILENAME
    if not file.is_file():
        return None
    state = json.loads(file.read_text())
    switch.load_state_dict(state)
    return state


@dataclass(kw_only=True)
class SparseStepFields:
    """Config field of an architecture with a sparse training step (:mod:`sae_lens_ext.training.sparse`).

    Args:
        sparse_step: ``"auto"`` (default): the sparse step while the codes are sparse (measured
            density below ``sae_lens_ext.training.sparse.DENSITY_THRESHOLDS`` of the device; a device
            without a measured threshold, as CUDA for now, stays dense), the dense step before;
            ``"dense"``: always the dense step; ``"sparse"``: always the sparse step. Both
            compute the same gradients; options the sparse step cannot take make every step
            dense (said once).
    """

    sparse_step: str = "auto"

    def check_sparse_step(self) -> None:
        if self.sparse_step not in MODES:
            raise ValueError(
                f"{type(self).__name__}.sparse_step must be one of {', '.join(MODES)}, "
                f"got {self.sparse_step!r}"
            )


def has_hooks(sae: Any) -> bool:
    """Whether a TransformerLens hook is attached to one of the SAE's hook points (a hook may
    read or change the dense codes: such steps stay dense)."""
    hooks = getattr(sae, "hook_dict", {}).values()
    return any(hook.has_hooks(dir="both", including_permanent=True) for hook in hooks)


@dataclass
class SparseEncoder:
    """What an architecture's sparse step needs from its encoder (see
    :meth:`SparseStepMixin.sparse_encoder`).

    Args:
        hidden: the dense pre-activations, computed as the dense step computes them, under
            ``torch.no_grad()``.
        affine: how they depend on the parameters.
        activation: the activation that makes the codes.
        unscaled: ``hidden`` before ``affine.scale`` (when there is one).
    """

    hidden: torch.Tensor
    affine: AffineMap
    activation: Activation
    unscaled: torch.Tensor | None = None


class SparseStepMixin:
    """The sparse step for a :class:`~sae_lens_ext.training.sae.LossTermTrainingSAE` subclass whose
    config has :class:`SparseStepFields`. Put it before ``LossTermTrainingSAE`` (and after any
    mixin that overrides ``decode`` first) in the bases. The architecture:

    - implements :meth:`sparse_encoder` (its pre-activations and how they depend on its
      parameters) and :meth:`sparse_step_unsupported` (why its options need the dense step);
    - starts ``encode_with_hidden_pre`` with ``if self.sparse_now: return
      self.encode_sparse_step(x)``;
    - reads codes in its own penalties (:func:`codes_of`, :func:`decoder_weighted_l1`, ...).

    The mixin decodes codes with :func:`decode_sparse` (then upstream's output hooks). Loss
    terms with ``sparse_aware=True`` get the codes as a sparse COO ``feature_acts``; when an
    enabled term is not, every term gets a dense, differentiable one. The step's output
    reports the codes as a sparse COO tensor (SAE-Lens's trainer counts firing from it) and
    logs ``sparse_step`` and ``code_density``."""

    cfg: Any
    _sparse_switch: SparseStepSwitch | None = None
    #: True while a sparse step's forward pass runs (``encode_with_hidden_pre`` reads it).
    sparse_now: bool = False
    #: The next step's path, chosen after the previous step (Python state: a compiled step
    #: reads it without a graph break and runs a sparse step eagerly, in one piece).
    next_step_sparse: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.next_step_sparse = self.sparse_switch.choose()

    def sparse_step_unsupported(self) -> str | None:
        """Why this SAE's options need the dense step (None: they do not). Override."""
        return None

    def sparse_encoder(self, x: torch.Tensor) -> SparseEncoder:
        """The encoder of a sparse step on input ``x`` (override)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sparse_encoder")

    @property
    def sparse_switch(self) -> SparseStepSwitch:
        if self._sparse_switch is None:
            self._sparse_switch = SparseStepSwitch(
                self.cfg.sparse_step,
                unsupported=self.sparse_step_unsupported(),
                owner=type(self).__name__,
                d_in=self.cfg.d_in,
            )
        return self._sparse_switch

    def training_forward_pass(self, step_input: Any) -> Any:
        if self.next_step_sparse:
            return self.sparse_training_forward_pass(step_input)
        return super().training_forward_pass(step_input)  # type: ignore[misc]

    @torch.compiler.disable  # entry counts vary from step to step: eager, in one piece
    def sparse_training_forward_pass(self, step_input: Any) -> Any:
        """The base class's forward pass with the sparse encoder and decoder (the dense one
        while a TransformerLens hook is attached)."""
        self.sparse_now = not has_hooks(self)
        try:
            return super().training_forward_pass(step_input)  # type: ignore[misc]
        finally:
            self.sparse_now = False

    @torch.compiler.disable
    def end_step(self, step_input: Any, output: Any) -> None:
        """Report sparse codes as COO, measure density on dense steps, log the path, choose
        the next step's; then the base class's bookkeeping."""
        codes = codes_of(output.feature_acts)
        if codes is not None:
            if not output.feature_acts.is_sparse:
                output.feature_acts = codes.coo()
        else:
            self.sparse_switch.observe_dense(output.feature_acts, step_input.n_training_steps)
        output.metrics.update(self.sparse_switch.metrics(codes is not None))
        self.next_step_sparse = self.sparse_switch.choose()
        super().end_step(step_input, output)  # type: ignore[misc]

    def save_model(self, path: str | Path) -> Any:
        saved = super().save_model(path)  # type: ignore[misc]
        save_switch_state(self.sparse_switch, path)  # checkpoints: the path's state too
        return saved

    def load_weights_from_checkpoint(self, checkpoint_path: str | Path) -> None:
        super().load_weights_from_checkpoint(checkpoint_path)  # type: ignore[misc]
        if load_switch_state(self.sparse_switch, checkpoint_path) is not None:
            self.next_step_sparse = self.sparse_switch.sparse

    def encode_sparse_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(feature_acts, hidden_pre)`` of a sparse step, for upstream's forward pass."""
        encoder = self.sparse_encoder(x)
        encoding = encode_sparse(
            encoder.hidden, encoder.affine, encoder.activation, encoder.unscaled
        )
        codes = encoding.codes
        self.sparse_switch.observe_codes(codes)
        if self._terms_read_dense():
            feature_acts = attach_codes(codes.dense(), codes)
        else:
            feature_acts = codes.coo()
        return feature_acts, encoding.hidden_pre

    def _terms_read_dense(self) -> bool:
        terms = getattr(self, "_terms", [])
        return any(not getattr(term, "sparse_aware", False) for _, term in terms)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        codes = codes_of(feature_acts)
        if codes is None:
            return super().decode(feature_acts)  # type: ignore[misc]
        return self.finish_decode(decode_sparse(codes, self.W_dec, self.b_dec))  # type: ignore[attr-defined]

    def finish_decode(self, recons: torch.Tensor) -> torch.Tensor:
        """Upstream's decode after the product: output hooks, normalisation, reshaping."""
        sae: Any = self
        out = sae.run_time_activation_norm_fn_out(sae.hook_sae_recons(recons))
        return sae.reshape_fn_out(out, sae.d_head)
