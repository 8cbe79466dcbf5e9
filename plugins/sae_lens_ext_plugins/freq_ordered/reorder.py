"""Exact post-hoc reordering: permute any supported SAE's latents by measured frequency.

Permuting latents (encoder columns, encoder biases and thresholds, decoder
rows, per-latent gains) leaves every output unchanged: each latent is computed
from the input on its own, and the decoder sums over latents. This is the
baseline the ``frequency_ordering`` loss must beat.
"""

from __future__ import annotations

from typing import Any

import torch

# parameter / buffer name -> axis that indexes latents
LATENT_AXES: dict[str, int] = {
    "W_enc": 1,
    "W_dec": 0,
    "b_enc": 0,
    "threshold": 0,  # jumprelu
    "log_threshold": 0,  # jumprelu (training)
    "b_gate": 0,  # gated
    "b_mag": 0,
    "r_mag": 0,
    "ln_weight": 0,  # freq_ordered
    "ln_bias": 0,
    "W_skip": 1,
    "latent_frequency": 0,
}
# per-architecture tensors that do not index latents
NOT_LATENT = {"b_dec", "W_q", "W_k", "W_v", "topk_threshold", "frequency_updates"}
SUPPORTED = {"standard", "topk", "abstopk", "batchtopk", "jumprelu", "gated", "freq_ordered"}
REFUSED = {
    "matryoshka_batchtopk": "its nested prefix losses give latent indices a meaning during training "
    "(save it; the saved jumprelu SAE can be reordered)",
    "matching_pursuit": "its greedy encoder depends on the order of decoder rows on ties",
    "temporal": "its attention over context is not a per-latent map",
}


def _check_supported(sae: Any) -> str:
    arch = sae.cfg.architecture()
    if arch in REFUSED:
        raise NotImplementedError(
            f"reorder_by_frequency: cannot reorder a {arch!r} SAE: {REFUSED[arch]}"
        )
    if arch not in SUPPORTED:
        raise NotImplementedError(
            f"reorder_by_frequency: architecture {arch!r} is not supported (supported: "
            f"{', '.join(sorted(SUPPORTED))}); add its latent-indexed tensors to LATENT_AXES"
        )
    d_sae = sae.cfg.d_sae
    for name, tensor in [*sae.named_parameters(), *sae.named_buffers()]:
        if "." in name or name in LATENT_AXES or name in NOT_LATENT:
            continue
        if d_sae in tuple(tensor.shape):
            raise NotImplementedError(
                f"reorder_by_frequency: {arch!r} SAE has tensor {name!r} of shape "
                f"{tuple(tensor.shape)} that may index latents; refusing to guess"
            )
    return arch


@torch.no_grad()
def apply_permutation(sae: Any, permutation: torch.Tensor, check: bool = True) -> None:
    """Permute latents in place: new latent ``j`` is old latent ``permutation[j]``.

    ``check=False`` skips the check that ``permutation`` is one (a host-device sync), for
    a caller whose permutation is one by construction (an ``argsort``)."""
    _check_supported(sae)
    d_sae = sae.cfg.d_sae
    perm = torch.as_tensor(permutation, dtype=torch.long).flatten()
    if perm.numel() != d_sae or (
        check and not torch.equal(torch.sort(perm).values, torch.arange(d_sae, device=perm.device))
    ):
        raise ValueError(f"permutation must be a permutation of range(d_sae={d_sae})")
    for name, tensor in [*sae.named_parameters(), *sae.named_buffers()]:
        axis = LATENT_AXES.get(name)
        if axis is None or "." in name or tensor.ndim <= axis or tensor.shape[axis] != d_sae:
            continue
        tensor.data.copy_(tensor.data.index_select(axis, perm.to(tensor.device)))


def reorder_by_frequency(sae: Any, frequencies: torch.Tensor) -> torch.Tensor:
    """Sort ``sae``'s latents in place by decreasing ``frequencies`` (ties keep their order).

    Works for SAE-Lens's standard, topk, abstopk, jumprelu, gated and batchtopk SAEs
    and for ``freq_ordered``; refuses others with ``NotImplementedError``. Returns the
    permutation (new latent ``j`` is old latent ``permutation[j]``); reorder
    ``frequencies`` with it too (``frequencies[permutation]``). Optimizer state of a
    training SAE is not permuted: use it after training.
    """
    freqs = torch.as_tensor(frequencies).detach().float().flatten().cpu()
    if freqs.numel() != sae.cfg.d_sae:
        raise ValueError(
            f"frequencies has {freqs.numel()} entries, the SAE has d_sae={sae.cfg.d_sae}"
        )
    _check_supported(sae)
    permutation = torch.argsort(-freqs, stable=True)
    apply_permutation(sae, permutation)
    return permutation
