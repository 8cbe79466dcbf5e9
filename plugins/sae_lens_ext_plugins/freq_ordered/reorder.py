"""Exact post-hoc reordering: permute any supported SAE's latents by measured frequency.

Permuting latents (every tensor of the SAE's latent table: encoder columns, encoder
biases and thresholds, decoder rows, per-latent gains, buffers) leaves every output
unchanged when each latent is computed from the input on its own and the decoder sums
over latents. This is the baseline the ``frequency_ordering`` loss must beat.
"""

from __future__ import annotations

from typing import Any

import torch

from sae_lens_ext.api import latent_parameters, permute_latents

#: Architectures whose latents cannot be permuted without changing what they compute.
REFUSED = {
    "matryoshka_batchtopk": "its nested prefix losses give latent indices a meaning during training "
    "(save it; the saved jumprelu SAE can be reordered)",
    "matching_pursuit": "its greedy encoder depends on the order of decoder rows on ties",
    "temporal": "its attention over context is not a per-latent map",
}


def _check_supported(sae: Any) -> None:
    """Refuse an architecture a permutation would change, or whose latent table cannot be
    read (a tensor with an axis of size ``d_sae`` left undeclared)."""
    arch = sae.cfg.architecture()
    if arch in REFUSED:
        raise NotImplementedError(
            f"reorder_by_frequency: cannot reorder a {arch!r} SAE: {REFUSED[arch]}"
        )
    try:
        latent_parameters(sae)
    except ValueError as exc:
        raise NotImplementedError(f"reorder_by_frequency: {exc}") from exc


def reorder_by_frequency(sae: Any, frequencies: torch.Tensor) -> torch.Tensor:
    """Sort ``sae``'s latents in place by decreasing ``frequencies`` (ties keep their order).

    Works for every SAE whose latents are independent per-latent maps (SAE-Lens's
    standard, topk, abstopk, jumprelu, gated and batchtopk SAEs, ``freq_ordered``, any
    plugin architecture that declares its latent table) and refuses others with
    ``NotImplementedError``. Returns the permutation (new latent ``j`` is old latent
    ``permutation[j]``); reorder ``frequencies`` with it too (``frequencies[permutation]``).
    Optimizer state of a training SAE is not permuted: use it after training.
    """
    freqs = torch.as_tensor(frequencies).detach().float().flatten().cpu()
    if freqs.numel() != sae.cfg.d_sae:
        raise ValueError(
            f"frequencies has {freqs.numel()} entries, the SAE has d_sae={sae.cfg.d_sae}"
        )
    _check_supported(sae)
    permutation = torch.argsort(-freqs, stable=True)
    permute_latents(sae, permutation)
    return permutation
