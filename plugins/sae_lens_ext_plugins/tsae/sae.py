"""The ``tsae`` SAE (Temporal SAE, Bhalla et al., ICLR 2026): config, inference and training.

A reproduction of the reference trainer ``TemporalMatryoshkaBatchTopKTrainer``
(AI4LIFE-GROUP/temporal-saes, ``dictionary_learning/trainers/temporal_sequence_top_k.py``)
on upstream's ``MatryoshkaBatchTopKTrainingSAE``. A training batch is ``B`` pairs of
adjacent positions: rows ``2i`` and ``2i + 1`` are positions ``t`` and ``t + 1`` of one
sequence (:meth:`TSAETrainingSAEConfig.batch_window` is 2). Per step, as the reference does:

- each half (all positions ``t + 1``, all positions ``t``) is encoded with its own
  BatchTopK (``k * B`` activations kept per half);
- only positions ``t + 1`` (the reference's ``x[:, 0]``, "current") are reconstructed:
  Matryoshka losses ``l_g = w_g * mean_b ||x - x_hat_{<= g}||^2`` over the nested groups,
  averaged over groups (``mean_g l_g``);
- the temporal term uses the first group only: ``L = F_{t+1} F_t^T`` (raw dot products over
  the batch, no temperature, no normalisation), ``(CE(L, diag) + CE(L^T, diag)) / 2``;
- the auxiliary loss is the reference's: the top ``d_in // 2`` dead latents (ReLU
  pre-activations) reconstruct the residual, divided by the residual's variance;
- ``loss = mean_g l_g + aux_loss_coefficient * aux + temporal_coefficient * temporal``.

After training it saves as upstream's JumpReLU SAE (threshold = the BatchTopK threshold,
decoder norms folded), as upstream's ``matryoshka_batchtopk`` does; the saved config keeps
``matryoshka_widths`` so that ``latents[:, :matryoshka_widths[0]]`` are the high-level ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEConfig, TrainStepInput, TrainStepOutput
from sae_lens.saes.topk_sae import act_times_W_dec
from typing_extensions import override

from sae_lens_ext.api import (
    AffineMap,
    BatchTopK,
    SparseCodes,
    SparseEncoding,
    SparseStepFields,
    SparseStepSwitch,
    accumulate,
    decode_sparse,
    encoder_input,
    gram,
    has_hooks,
    load_switch_state,
    save_switch_state,
)

ARCHITECTURE = "tsae"
PAIR = 2  # rows per window: positions t and t + 1


@dataclass
class TSAEConfig(JumpReLUSAEConfig):
    """Inference config: upstream's JumpReLU SAE plus the Matryoshka widths it was trained
    with (``matryoshka_widths[0]`` latents form the high-level group)."""

    matryoshka_widths: list[int] = field(default_factory=list)

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class TSAE(JumpReLUSAE):
    """Upstream's JumpReLU SAE (same maths); knows which latents are high-level."""

    cfg: TSAEConfig

    @property
    def high_level_latents(self) -> slice:
        """The first Matryoshka group, the latents the temporal term trained."""
        widths = self.cfg.matryoshka_widths
        return slice(0, widths[0] if widths else self.cfg.d_sae)


@dataclass
class TSAETrainingSAEConfig(MatryoshkaBatchTopKTrainingSAEConfig, SparseStepFields):
    """Training config; defaults are the reference's ``train_temporal.py``.

    Args:
        k: BatchTopK activations per token on average (reference ``--k 20``).
        high_level_fraction: share of latents in the first (high-level) Matryoshka group when
            ``matryoshka_widths`` is not given (reference ``group_fractions=[0.2, 0.8]``:
            widths ``[int(0.2 d_sae), d_sae]``).
        group_weights: weight of each group's reconstruction loss; empty (default) means
            group size / ``d_sae`` (the reference script's ``group_weights=[0.2, 0.8]``).
        temporal_coefficient: weight of the temporal contrastive term (reference
            ``temp_alpha = 0.1``).
        aux_loss_coefficient: weight of the auxiliary dead-latent loss (reference
            ``auxk_alpha = 1/32``).
        sparse_step: ``"auto"`` (default), ``"dense"`` or ``"sparse"``: whether a step
            computes the decoders and the backward from the active latents only (same
            gradients; see ``sae_lens_ext.training.sparse``).
    """

    # BatchTopK's k is a mean over the batch, a float, as upstream's BatchTopK config has it
    k: float = 20  # type: ignore[assignment]
    high_level_fraction: float = 0.2
    group_weights: list[float] = field(default_factory=list)
    temporal_coefficient: float = 0.1
    aux_loss_coefficient: float = 1 / 32

    @override
    def __post_init__(self) -> None:
        if not 0 < self.high_level_fraction < 1:
            raise ValueError(
                f"high_level_fraction must be in (0, 1), got {self.high_level_fraction}"
            )
        if not 0 < self.k <= self.d_sae:
            raise ValueError(
                f"k={self.k:g}: BatchTopK keeps k latents per token on average, so k must be "
                f"in (0, d_sae={self.d_sae}]; lower k or raise d_sae"
            )
        if not self.matryoshka_widths:
            self.matryoshka_widths = [int(self.high_level_fraction * self.d_sae), self.d_sae]
        if self.matryoshka_widths[0] < 1:
            raise ValueError(
                f"the high-level group is empty (matryoshka_widths={self.matryoshka_widths}); "
                "raise d_sae or high_level_fraction"
            )
        if self.group_weights and len(self.group_weights) != len(self.matryoshka_widths):
            raise ValueError(
                f"group_weights has {len(self.group_weights)} entries for "
                f"{len(self.matryoshka_widths)} matryoshka_widths; give one per group"
            )
        for name in ("temporal_coefficient", "aux_loss_coefficient"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.check_sparse_step()
        super().__post_init__()

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return TSAEConfig

    def batch_window(self) -> int:
        """Consecutive positions a training batch must keep together: pairs (t, t + 1)."""
        return PAIR

    def weights(self) -> list[float]:
        """Per-group reconstruction weights (explicit, or group size / ``d_sae``)."""
        if self.group_weights:
            return list(self.group_weights)
        edges = [0, *self.matryoshka_widths]
        return [(b - a) / self.d_sae for a, b in pairwise(edges)]


def symmetric_contrastive_loss(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """The reference's temporal term: ``L = current @ previous.T`` (``(B, B)`` raw dot
    products), ``(CE(L, arange) + CE(L.T, arange)) / 2``."""
    return symmetric_cross_entropy(current @ previous.T)


def symmetric_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``(CE(L, arange) + CE(L.T, arange)) / 2`` of a square matrix of logits."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class TSAETrainingSAE(MatryoshkaBatchTopKTrainingSAE):
    """Training class: the reference's loss on pairs of adjacent positions.

    The step output's ``sae_in``/``sae_out`` are the reconstructed rows (positions
    ``t + 1``); its ``feature_acts`` hold the codes of all rows, so upstream's trainer counts
    firing frequencies and dead latents over the whole batch (the reference counts firing on
    positions ``t + 1`` only)."""

    cfg: TSAETrainingSAEConfig

    def __init__(self, cfg: TSAETrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.n_trained_steps = 0
        self._loaded = False
        self.sparse_switch = SparseStepSwitch(
            cfg.sparse_step, owner=type(self).__name__, d_in=cfg.d_in
        )
        #: The next step's path (:mod:`sae_lens_ext.training.sparse`), chosen after each step.
        self.next_step_sparse = self.sparse_switch.choose()

    @override
    def get_activation_fn(self) -> BatchTopK:
        """Upstream's BatchTopK, choosing ties at its boundary as the sparse step does (so
        the dense and the sparse step pick the same entries)."""
        return BatchTopK(self.cfg.k)

    def split_pairs(self, sae_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(current, previous)``: rows ``2i + 1`` (position ``t + 1``) and ``2i`` (``t``)."""
        if sae_in.dim() != 2 or sae_in.shape[0] % PAIR:
            raise ValueError(
                f"tsae: a training batch is pairs of adjacent positions (rows 2i, 2i+1); got "
                f"shape {tuple(sae_in.shape)}: set the batch size (train_batch_size_tokens) "
                "to an even number and keep positions in order (activations_mixing_fraction=0)"
            )
        return sae_in[1::PAIR], sae_in[0::PAIR]

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        current, previous = self.split_pairs(step_input.sae_in)
        if self.next_step_sparse:  # chosen after the previous step (no graph break)
            return self.sparse_forward_pass(step_input, current, previous)
        acts, hidden_pre = self.encode_with_hidden_pre(current)
        acts_previous, _ = self.encode_with_hidden_pre(previous)
        self.update_topk_threshold(acts)
        mse_loss, sae_out = self.matryoshka_mse_loss(current, self._iterable_decode(acts, True))
        high = slice(0, self.cfg.matryoshka_widths[0])
        temporal = symmetric_contrastive_loss(acts[:, high], acts_previous[:, high])
        aux = self.reference_aux_loss(current, sae_out, hidden_pre, step_input.dead_neuron_mask)
        # codes of every row, so that upstream's firing statistics count the whole batch
        feature_acts = torch.cat([acts, acts_previous]).detach()
        return self.step_output(
            step_input, current, sae_out, feature_acts, hidden_pre, mse_loss, temporal, aux
        )

    @torch.compiler.disable  # the entry counts vary: eager, in one piece
    def sparse_forward_pass(
        self, step_input: TrainStepInput, current: torch.Tensor, previous: torch.Tensor
    ) -> TrainStepOutput:
        """The same step from the active entries: both halves' codes, the Matryoshka decodes,
        the temporal logits and the auxiliary decode touch only the entries (the dense step
        while a TransformerLens hook is attached)."""
        if has_hooks(self):
            self.next_step_sparse = False
            return self.training_forward_pass(step_input)
        # the decoder norms once (the dense step takes them three times: same values)
        norms = self.W_dec.norm(dim=-1) if self.cfg.rescale_acts_by_decoder_norm else None
        encoded, codes_previous = self.encode_sparse_pairs(current, previous, norms)
        codes = encoded.codes
        self.sparse_switch.observe_codes(codes)
        self.update_topk_threshold(codes.values.detach())
        mse_loss, sae_out = self.matryoshka_mse_loss(current, self.sparse_levels(codes, norms))
        width = self.cfg.matryoshka_widths[0]
        logits = gram(codes, codes_previous, first=width)
        temporal = symmetric_cross_entropy(logits)
        aux = self.reference_aux_loss(
            current, sae_out, encoded.hidden_pre, step_input.dead_neuron_mask, (encoded, norms)
        )
        feature_acts = _stacked_coo(codes, codes_previous)
        hidden_pre = encoded.hidden_pre
        return self.step_output(
            step_input, current, sae_out, feature_acts, hidden_pre, mse_loss, temporal, aux
        )

    def step_output(
        self,
        step_input: TrainStepInput,
        current: torch.Tensor,
        sae_out: torch.Tensor,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        mse_loss: torch.Tensor,
        temporal: torch.Tensor,
        aux: torch.Tensor,
    ) -> TrainStepOutput:
        temporal_loss = self.cfg.temporal_coefficient * temporal
        aux_loss = self.cfg.aux_loss_coefficient * aux
        path = self.count_step(feature_acts)
        return TrainStepOutput(
            sae_in=current,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=mse_loss + temporal_loss + aux_loss,
            losses={
                "mse_loss": mse_loss,
                "temporal_loss": temporal_loss,
                "auxiliary_reconstruction_loss": aux_loss,
            },
            metrics={"topk_threshold": self.topk_threshold, **path},
        )

    def encode_sparse_pairs(
        self, current: torch.Tensor, previous: torch.Tensor, scale: torch.Tensor | None
    ) -> tuple[SparseEncoding, SparseCodes]:
        """Upstream's ``encode_with_hidden_pre`` of each half (BatchTopK of its pre-activations,
        times ``scale``: the decoder norms with ``rescale_acts_by_decoder_norm``) as entries:
        the current half's encoding and the previous half's codes, whose values share one
        encoder backward. The previous half goes first, and the current half's dense
        pre-activations are written over its (once its entries are read)."""
        select = self.get_activation_fn().select
        in_p, shift = encoder_input(self, previous, self.process_sae_in(previous))
        unscaled, hidden = self.pre_activations(in_p, scale)
        rows_p, cols_p = select(hidden)
        values_p = unscaled[rows_p, cols_p]
        in_c, shift = encoder_input(self, current, self.process_sae_in(current))
        unscaled, hidden = self.pre_activations(in_c, scale, reuse=(unscaled, hidden))
        rows_c, cols_c = select(hidden)
        n = in_c.shape[0]
        both = AffineMap(
            (torch.cat([in_c, in_p]),), (self.W_enc,), self.b_enc, shift=shift, scale=scale
        )
        pre = both.at_values(
            torch.cat([unscaled[rows_c, cols_c], values_p]),
            torch.cat([rows_c, rows_p + n]),
            torch.cat([cols_c, cols_p]),
        ).relu()  # BatchTopK's values: ReLU'd pre-activations
        d_sae = self.cfg.d_sae
        codes = SparseCodes(rows_c, cols_c, pre[: rows_c.numel()], n, d_sae)
        codes_p = SparseCodes(rows_p, cols_p, pre[rows_c.numel() :], n, d_sae)
        affine = AffineMap((in_c,), (self.W_enc,), self.b_enc, shift=shift, scale=scale)
        encoded = SparseEncoding(codes, affine.dense(hidden, unscaled), affine, unscaled)
        return encoded, codes_p

    @torch.no_grad()
    def pre_activations(
        self,
        sae_in: torch.Tensor,
        scale: torch.Tensor | None,
        reuse: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(unscaled, hidden)``: upstream's pre-activations of ``sae_in`` (encoder input)
        before and after ``scale``, the same values; written into ``reuse``'s tensors (the
        other half's, same shape and ``scale``) where they fit (a fresh batch x ``d_sae``
        tensor costs a pass of page faults on the CPU)."""
        out = reuse[0] if reuse is not None else None
        unscaled = self.hook_sae_acts_pre(accumulate(sae_in @ self.W_enc, self.b_enc, out=out))
        if scale is None:
            return unscaled, unscaled
        if reuse is not None:
            return unscaled, torch.mul(unscaled, scale, out=reuse[1])
        return unscaled, unscaled * scale

    def sparse_levels(
        self, codes: SparseCodes, norms: torch.Tensor | None
    ) -> list[tuple[int, torch.Tensor]]:
        """``_iterable_decode(acts, include_outer_loss=True)`` from the entries (``norms``:
        the decoder norms with ``rescale_acts_by_decoder_norm``)."""
        if norms is not None:
            codes = codes.with_values(codes.values * (1 / norms)[codes.cols])
        widths = self.cfg.matryoshka_widths
        decoded = decode_sparse(codes, self.W_dec, self.b_dec, edges=[0, *widths])
        return [
            (w, self.run_time_activation_norm_fn_out(d))
            for w, d in zip(widths, decoded, strict=True)
        ]

    @override
    @torch.no_grad()
    def update_topk_threshold(self, acts_topk: torch.Tensor) -> None:
        """Upstream's update (EMA of the batch's smallest positive activation, unchanged when
        nothing fired) with the same values, but without its host sync (``if mask.any()``)
        and boolean indexing, so that it runs inside one compiled graph."""
        lr = self.cfg.topk_threshold_lr
        with torch.autocast(self.topk_threshold.device.type, enabled=False):
            positive = acts_topk > 0
            smallest = acts_topk.masked_fill(~positive, torch.inf).amin()
            updated = (1 - lr) * self.topk_threshold + lr * smallest.to(self.topk_threshold.dtype)
            self.topk_threshold = torch.where(positive.any(), updated, self.topk_threshold)

    @torch.compiler.disable  # Python state: compiled, each new value would recompile
    def count_step(self, feature_acts: torch.Tensor) -> dict[str, float]:
        """Count the step, measure a dense step's code density, choose the next step's path;
        return this step's path for the log."""
        sparse = feature_acts.is_sparse
        if not sparse:
            self.sparse_switch.observe_dense(feature_acts, self.n_trained_steps)
        self.n_trained_steps += 1
        self.next_step_sparse = self.sparse_switch.choose()
        return self.sparse_switch.metrics(sparse)

    def matryoshka_mse_loss(
        self, sae_in: torch.Tensor, levels: Iterable[tuple[int, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean_g w_g * mean_b ||x - x_hat_{<= g}||^2, full reconstruction)`` from the
        reconstructions of the nested groups (``_iterable_decode(acts, True)``)."""
        weights = self.cfg.weights()
        losses = []
        decoded = sae_in
        for weight, (_, decoded) in zip(weights, levels, strict=True):
            losses.append(weight * (sae_in - decoded).pow(2).sum(-1).mean())
        return torch.stack(losses).mean(), decoded

    def reference_aux_loss(
        self,
        sae_in: torch.Tensor,
        sae_out: torch.Tensor,
        hidden_pre: torch.Tensor,
        dead_neuron_mask: torch.Tensor | None,
        encoded: tuple[SparseEncoding, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """The reference's auxiliary loss, without a host sync: the top ``d_in // 2`` dead
        latents by ReLU pre-activation reconstruct the detached residual (no ``b_dec``),
        ``||e - e_hat||^2 / ||e - mean(e)||^2`` (batch means); 0 when no latent is dead.
        With ``encoded`` (a sparse step: its encoding and decoder norms) the chosen latents
        are decoded as entries."""
        if dead_neuron_mask is None or _none_dead_on_cpu(dead_neuron_mask):
            return sae_out.new_zeros(())
        residual = (sae_in - sae_out).detach().float()
        k_aux = min(sae_in.shape[-1] // 2, self.cfg.d_sae)
        if encoded is not None:
            recons = self.sparse_aux_reconstruction(*encoded, dead_neuron_mask, k_aux)
        else:
            candidates = torch.where(dead_neuron_mask[None], hidden_pre.relu(), -torch.inf)
            values, indices = candidates.topk(k_aux, dim=-1, sorted=False)
            values = torch.where(torch.isfinite(values), values, 0.0)  # fewer dead than k_aux
            aux_acts = torch.zeros_like(hidden_pre).scatter_(-1, indices, values)
            rescale = self.cfg.rescale_acts_by_decoder_norm
            recons = act_times_W_dec(aux_acts, self.W_dec, rescale)
        l2 = (residual - recons.float()).pow(2).sum(-1).mean()
        denominator = (residual - residual.mean(0)).pow(2).sum(-1).mean()
        return (l2 / denominator).nan_to_num(0.0) * dead_neuron_mask.any()

    def sparse_aux_reconstruction(
        self,
        encoded: SparseEncoding,
        norms: torch.Tensor | None,
        dead_neuron_mask: torch.Tensor,
        k_aux: int,
    ) -> torch.Tensor:
        """The auxiliary reconstruction of :meth:`reference_aux_loss` from ``k_aux`` entries
        per row (the same ``topk`` call picks them; their values carry the gradient)."""
        dead = dead_neuron_mask.to(encoded.unscaled.device)
        with torch.no_grad():
            candidates = torch.where(dead[None], encoded.hidden_pre.relu(), -torch.inf)
            cols = candidates.topk(k_aux, dim=-1, sorted=False).indices.sort(dim=-1).values
        n_rows = cols.shape[0]
        rows = torch.arange(n_rows, device=cols.device).unsqueeze(1).expand_as(cols).reshape(-1)
        cols = cols.reshape(-1)
        pre = encoded.pre_activations_at(rows, cols).relu()
        values = torch.where(dead[cols], pre, torch.zeros_like(pre))  # fewer dead than k_aux
        if norms is not None:
            values = values * (1 / norms)[cols]
        codes = SparseCodes(rows, cols, values, n_rows, self.cfg.d_sae)
        return decode_sparse(codes, self.W_dec)

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        self._loaded = True
        super().process_state_dict_for_loading(state_dict)

    @override
    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        saved = super().save_model(path)  # checkpoints: the step count and path state too
        save_switch_state(self.sparse_switch, path, {"n_trained_steps": self.n_trained_steps})
        return saved

    @override
    def load_weights_from_checkpoint(self, checkpoint_path: Path | str) -> None:
        super().load_weights_from_checkpoint(checkpoint_path)
        state = load_switch_state(self.sparse_switch, checkpoint_path)
        if state is not None:
            self.n_trained_steps = int(state["n_trained_steps"])
            self.next_step_sparse = self.sparse_switch.sparse

    @override
    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        if self.n_trained_steps == 0 and not self._loaded:
            raise RuntimeError(
                "tsae: refusing to save an SAE that trained 0 steps; raise training_tokens "
                "(or training_steps) to at least one batch"
            )
        return super().save_inference_model(path)


def _stacked_coo(first: SparseCodes, second: SparseCodes) -> torch.Tensor:
    """The codes of ``first``'s rows then ``second``'s as one detached sparse COO tensor."""
    rows = torch.cat([first.rows, second.rows + first.n_rows])
    indices = torch.stack([rows, torch.cat([first.cols, second.cols])])
    values = torch.cat([first.values, second.values]).detach()
    shape = (first.n_rows + second.n_rows, first.n_latents)
    return torch.sparse_coo_tensor(
        indices, values, shape, is_coalesced=True, check_invariants=False
    )


def _none_dead_on_cpu(dead_neuron_mask: torch.Tensor) -> bool:
    """No latent is dead, where reading that costs nothing (a CPU tensor): the auxiliary loss
    is then 0 with no gradient, as computing it would give. On an accelerator it is computed
    (and multiplied by ``any(dead)``), which needs no read."""
    if torch.compiler.is_compiling():  # a compiled step computes it: no graph break
        return False
    return dead_neuron_mask.device.type == "cpu" and not bool(dead_neuron_mask.any())
