"""The tokens a latent's decoder direction promotes and suppresses, through the model's
unembedding (the direct effect on the logits, as SAEDashboard's logit tables).

For a decoder row ``d`` read at a residual-stream hook: ``d`` goes through the final
norm's linear part (centred for LayerNorm, scaled by its weight ``w``; the norm's
data-dependent scale is left out, as it is the same for every token) and the unembedding
``W_U``: ``logits = (center(d) * w) @ W_U``. The unembedding bias is left out: it does not
depend on the latent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: Tokens listed each way, and bins of the histogram of a latent's logit effects.
TOP_TOKENS = 10
LOGIT_BINS = 40
#: Latents per chunk of ``(chunk, d_vocab)`` logits.
CHUNK = 256


@dataclass
class PromotedTokens:
    """Per browsed latent (rows as ``BrowserData.latents``): the ``TOP_TOKENS`` most
    promoted and most suppressed token ids with their logit effects, and a histogram of
    the effects on every token of the vocabulary."""

    top_ids: torch.Tensor  # (n, TOP_TOKENS)
    top_values: torch.Tensor
    bottom_ids: torch.Tensor  # most negative first
    bottom_values: torch.Tensor
    hist_counts: torch.Tensor  # (n, LOGIT_BINS)
    hist_edges: torch.Tensor  # (n, LOGIT_BINS + 1)


def direction_logits(model: Any, directions: torch.Tensor) -> torch.Tensor:
    """``(n, d_vocab)`` direct logit effect of ``(n, d_model)`` residual directions."""
    d = directions.to(model.W_U.device, torch.float32)
    if str(getattr(model.cfg, "normalization_type", "")).startswith("LN"):
        d = d - d.mean(-1, keepdim=True)
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    if weight is not None:
        d = d * weight.float()
    return d @ model.W_U.float()


@torch.no_grad()
def promoted_tokens(model: Any, sae: Any, latents: list[int]) -> PromotedTokens:
    """:class:`PromotedTokens` of ``latents`` (the SAE's decoder rows through ``model``)."""
    rows = torch.tensor(latents, dtype=torch.long, device=sae.W_dec.device)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in PromotedTokens.__dataclass_fields__}
    k = min(TOP_TOKENS, int(model.cfg.d_vocab))
    for chunk in rows.split(CHUNK):
        logits = direction_logits(model, sae.W_dec[chunk])
        top = logits.topk(k, dim=1)
        bottom = logits.topk(k, dim=1, largest=False)
        lo, hi = logits.amin(1, keepdim=True), logits.amax(1, keepdim=True)
        width = (hi - lo).clamp_min(1e-12) / LOGIT_BINS
        bins = ((logits - lo) / width).floor().clamp(0, LOGIT_BINS - 1).long()
        counts = torch.zeros(len(chunk), LOGIT_BINS, dtype=torch.int64, device=logits.device)
        counts.scatter_add_(1, bins, torch.ones_like(bins))
        edges = lo + width * torch.arange(LOGIT_BINS + 1, device=logits.device)
        for key, value in (
            ("top_ids", top.indices),
            ("top_values", top.values),
            ("bottom_ids", bottom.indices),
            ("bottom_values", bottom.values),
            ("hist_counts", counts),
            ("hist_edges", edges),
        ):
            parts[key].append(value.cpu())
    return PromotedTokens(**{key: torch.cat(value) for key, value in parts.items()})
