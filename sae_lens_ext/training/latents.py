"""The one table of latent-indexed tensors, and everything that moves latents with it.

An SAE's parameters and buffers whose slices belong to one latent each (encoder columns,
decoder rows, encoder biases, thresholds, per-latent gains, a firing-frequency buffer...)
must move together whenever latents are rewritten or reordered. One table says which
they are and along which axis: :func:`latent_parameters`. It is what an architecture
declares (``latent_parameters()`` on the SAE, see :class:`DeclaresLatentParameters`), and
it drives

- resampling (:func:`write_latents`: new rows for dead latents, fresh optimizer moments),
- permutations such as a periodic sort (:func:`permute_latents`: tensors and the
  optimizer's moments),
- folding the decoder norms (:func:`fold_decoder_norms`),

for the built-in architectures and third-party ones alike. A tensor with an axis of size
``d_sae`` that the table neither declares nor marks ``None`` (not indexed by latent) is an
error naming it: a forgotten declaration cannot leave that tensor behind silently.

SAE-Lens's own classes declare nothing; their table is read from the shapes (every tensor
with exactly one axis of size ``d_sae`` is indexed by latent along it), which is exact for
every upstream architecture and refuses a tensor whose latent axis would be ambiguous.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from sae_lens_ext.training.optim import permute_optimizer_rows, reset_optimizer_rows

if TYPE_CHECKING:
    from sae_lens.saes.sae import SAE


@dataclass(frozen=True)
class LatentAxis:
    """How one parameter or buffer is indexed by latent.

    Attributes:
        axis: the axis whose index is the latent (its size is ``d_sae``).
        fold: how slice ``i`` changes when ``fold_W_dec_norm`` moves the norm ``n_i`` of
            decoder row ``i`` into the encoder (latent ``i``'s code is multiplied by
            ``n_i``): the slice is multiplied by ``n_i ** fold``. ``W_dec``: -1; ``W_enc``,
            ``b_enc`` and anything else on the scale of the pre-activations (a threshold,
            a gain before the activation): 1; a statistic that does not move (a firing
            frequency): 0. ``None``: the rescaling cannot be folded exactly into this
            tensor; :func:`fold_decoder_norms` then refuses, naming it.
    """

    axis: int
    fold: int | None


#: The parameters upstream's ``SAE`` base class creates (``b_enc`` is each architecture's).
BASE_LATENT_PARAMETERS: dict[str, LatentAxis | None] = {
    "W_enc": LatentAxis(1, fold=1),
    "W_dec": LatentAxis(0, fold=-1),
    "b_dec": None,  # d_in-sized: indexed by input dimension (d_in may equal d_sae)
}
#: The usual encoder bias, for architectures that create one.
ENCODER_BIAS = LatentAxis(0, fold=1)


@runtime_checkable
class DeclaresLatentParameters(Protocol):
    """An SAE that declares its latent-indexed tensors (the contract of a plugin SAE)."""

    def latent_parameters(self) -> Mapping[str, LatentAxis | None]:
        """Every parameter and buffer with an axis of size ``d_sae``, by name (dotted for
        submodules): its :class:`LatentAxis`, or ``None`` if it is not indexed by latent
        (a ``d_in``-sized bias when ``d_in == d_sae``, an attention matrix...)."""
        ...


class LatentTableError(ValueError):
    """An SAE's latent-indexed tensors and its declared table disagree."""


def named_tensors(sae: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``sae``, by (dotted) name."""
    tensors: dict[str, torch.Tensor] = dict(sae.named_parameters())
    tensors.update(sae.named_buffers())
    return tensors


def _latent_axes(tensor: torch.Tensor, d_sae: int) -> list[int]:
    return [i for i, size in enumerate(tensor.shape) if size == d_sae]


def inferred_latent_parameters(sae: nn.Module, d_sae: int) -> dict[str, LatentAxis | None]:
    """The table of an SAE that declares none (SAE-Lens's own classes): the base class's
    parameters, then every tensor with exactly one axis of size ``d_sae`` (folding
    unknown: ``fold=None``)."""
    table: dict[str, LatentAxis | None] = {}
    for name, tensor in named_tensors(sae).items():
        if name in BASE_LATENT_PARAMETERS:
            table[name] = BASE_LATENT_PARAMETERS[name]
            continue
        axes = _latent_axes(tensor, d_sae)
        if len(axes) > 1:
            raise LatentTableError(
                f"{type(sae).__name__}: {name!r} of shape {tuple(tensor.shape)} has several "
                f"axes of size d_sae={d_sae}, so the one indexed by latent cannot be read from "
                "the shape; declare latent_parameters() on the SAE class"
            )
        if axes:
            table[name] = LatentAxis(axes[0], fold=None)
    return table


def latent_parameters(sae: SAE[Any]) -> dict[str, LatentAxis]:
    """The latent-indexed parameters and buffers of ``sae``, checked: the declared table
    (or, for a class that declares none, the one read from the shapes) without its
    ``None`` entries.

    Raises :class:`LatentTableError` naming the tensor when a declared name does not exist,
    its axis does not have size ``d_sae``, or a tensor with an axis of size ``d_sae`` is
    missing from the declaration.
    """
    d_sae = sae.cfg.d_sae
    tensors = named_tensors(sae)
    owner = type(sae).__name__
    if isinstance(sae, DeclaresLatentParameters):
        declared = dict(sae.latent_parameters())
    else:
        declared = inferred_latent_parameters(sae, d_sae)
    for name, spec in declared.items():
        tensor = tensors.get(name)
        if tensor is None:
            raise LatentTableError(
                f"{owner}.latent_parameters() declares {name!r}, which is neither a parameter "
                f"nor a buffer of the SAE (it has: {', '.join(sorted(tensors))})"
            )
        if spec is not None and not (
            0 <= spec.axis < tensor.ndim and tensor.shape[spec.axis] == d_sae
        ):
            raise LatentTableError(
                f"{owner}.latent_parameters(): {name!r} has shape {tuple(tensor.shape)}, so "
                f"axis {spec.axis} is not of size d_sae={d_sae}"
            )
    for name, tensor in tensors.items():
        if name not in declared and _latent_axes(tensor, d_sae):
            kind = "parameter" if isinstance(tensor, nn.Parameter) else "buffer"
            raise LatentTableError(
                f"{owner}: {kind} {name!r} of shape {tuple(tensor.shape)} has an axis of size "
                f"d_sae={d_sae} but is not in {owner}.latent_parameters(); declare it "
                f"({name!r}: LatentAxis(axis, fold)), or {name!r}: None if it is not indexed "
                "by latent, so that resampling, sorting, optimizer state and folding move it "
                "with its latent"
            )
    return {name: spec for name, spec in declared.items() if spec is not None}


def check_latent_values(
    sae: SAE[Any], n_rows: int, values: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise ``ValueError`` unless every entry of ``values`` is a latent-indexed tensor of
    ``sae`` with its shape, the latent axis cut to ``n_rows`` (``source`` names the sender)."""
    table, tensors = latent_parameters(sae), named_tensors(sae)
    for name, value in values.items():
        if name not in table:
            raise ValueError(
                f"{source} returned {name!r}, not a latent-indexed tensor of "
                f"{type(sae).__name__} ({', '.join(table)})"
            )
        expected = list(tensors[name].shape)
        expected[table[name].axis] = n_rows
        if list(value.shape) != expected:
            raise ValueError(f"{source}: {name} has shape {list(value.shape)}, expected {expected}")


@torch.no_grad()
def write_latents(
    sae: SAE[Any],
    rows: torch.Tensor,
    values: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Give latents ``rows`` the new slices in ``values`` (by tensor name; a latent-indexed
    tensor not in ``values`` keeps its slices) and zero the optimizer's state of those rows
    in every latent-indexed parameter (fresh Adam moments for a resampled latent)."""
    tensors = named_tensors(sae)
    for name, spec in latent_parameters(sae).items():
        tensor = tensors[name]
        index = rows.to(tensor.device)
        if name in values:
            tensor.data.index_copy_(spec.axis, index, values[name].to(tensor.device, tensor.dtype))
        if optimizer is not None and isinstance(tensor, nn.Parameter):
            reset_optimizer_rows(optimizer, tensor, spec.axis, index)


@torch.no_grad()
def permute_latents(
    sae: SAE[Any],
    permutation: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    check: bool = True,
) -> None:
    """Reorder latents in place (new latent ``j`` is old latent ``permutation[j]``): every
    latent-indexed parameter and buffer, and with ``optimizer`` its per-row state, so the
    function the SAE computes does not change. ``check=False`` skips the check that
    ``permutation`` is one (a host-device sync), for a caller whose permutation is one by
    construction (an ``argsort``)."""
    d_sae = sae.cfg.d_sae
    perm = torch.as_tensor(permutation, dtype=torch.long).flatten()
    if perm.numel() != d_sae or (
        check and not torch.equal(torch.sort(perm).values, torch.arange(d_sae, device=perm.device))
    ):
        raise ValueError(f"permutation must be a permutation of range(d_sae={d_sae})")
    tensors = named_tensors(sae)
    for name, spec in latent_parameters(sae).items():
        tensor = tensors[name]
        index = perm.to(tensor.device)
        tensor.data.copy_(tensor.data.index_select(spec.axis, index))
        if optimizer is not None and isinstance(tensor, nn.Parameter):
            permute_optimizer_rows(optimizer, tensor, spec.axis, index)


@torch.no_grad()
def fold_decoder_norms(sae: SAE[Any]) -> torch.Tensor:
    """Give every decoder row unit norm and move its norm into the other latent-indexed
    tensors as their :attr:`LatentAxis.fold` says (outputs unchanged for an activation
    that commutes with a positive per-latent scale, such as ReLU); return the norms.
    Refuses (``NotImplementedError`` naming it) when a latent-indexed tensor declares
    ``fold=None``."""
    table, tensors = latent_parameters(sae), named_tensors(sae)
    unfoldable = [name for name, spec in table.items() if spec.fold is None]
    if unfoldable:
        raise NotImplementedError(
            f"{type(sae).__name__}: fold_W_dec_norm cannot fold the decoder norms into "
            f"{', '.join(unfoldable)} (declared fold=None)"
        )
    norms = tensors["W_dec"].norm(dim=-1).clamp(min=1e-8)
    for name, spec in table.items():
        if not spec.fold:
            continue
        tensor = tensors[name]
        shape = [1] * tensor.ndim
        shape[spec.axis] = -1
        scale = norms.to(tensor.device, tensor.dtype).view(shape).pow(abs(spec.fold))
        if spec.fold > 0:
            tensor.data.mul_(scale)
        else:
            tensor.data.div_(scale)
    return norms
