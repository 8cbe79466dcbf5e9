"""Sparse training steps: one dense product per step for SAEs whose codes are sparse.

After a ReLU, JumpReLU, TopK or BatchTopK, only L0 of ``d_sae`` codes of a row are non-zero
(L0 20-100 against ``d_sae`` 16k-64k). A training step then needs one dense product, the
encoder's forward (every latent's pre-activation); the decoder's forward, the decoder-weight
gradient, the gradient of the pre-activations, the encoder-weight gradient and the gradient of
``b_dec`` through the encoder touch only the active entries. This module computes them from
the active entries, on any device, with plain torch operations:

- :func:`encode_sparse`: the active entries of a batch (:class:`SparseCodes`) found in the
  pre-activations an architecture computed (without recording a gradient), whose values carry
  the gradient of the affine map that produced them (:class:`AffineMap`) - the backward costs
  two sparse products instead of two dense ones;
- :func:`decode_sparse`: the decoder's output (and, with ``edges``, the running sums of
  consecutive latent blocks: prefix and Matryoshka reconstructions) as a bag-of-rows sum
  (``embedding_bag``); its backward is a sampled product and a sparse product;
- penalties read from the entries: :func:`decoder_weighted_l1`, :meth:`SparseCodes.firing`,
  :func:`window_variation`, :func:`gram`;
- :class:`SparseStepSwitch` chooses each step's path from the measured code density
  (``sparse_step``: ``"auto"``, ``"dense"`` or ``"sparse"``), and :class:`SparseStepMixin`
  wires it into a :class:`~sae_lens_ext.training.sae.LossTermTrainingSAE`.

Exact: the entries and their values are read from the same pre-activations the dense path
computes, so both paths select the same codes; every gradient is the dense path's restricted
to where the activation passes a gradient (elsewhere the dense path's is zero), up to float
summation order. A loss term that reads the dense codes still gets them
(``LossTerm.sparse_aware=False``: a dense tensor whose backward gathers at the entries), and a
term that differentiates the dense pre-activations gets the dense encoder backward: slower,
never wrong.

The architecture says how its pre-activations depend on its parameters
(:class:`AffineMap`); options that couple all latents (a LayerNorm over latents) make the
step dense, said once.

Host reads. Where codes have a fixed count (TopK, BatchTopK) nothing in a step reads a value
on an accelerator (on the CPU, where a read is free, BatchTopK's selection and :func:`gram`
read counts to take a cheaper way). For ReLU and JumpReLU codes the number of active entries
sizes the step's buffers: on the CPU that is free, on an accelerator it is one integer read
back per sparse step (:func:`active_entries`). The switch measures density on dense steps every
:data:`CHECK_EVERY` steps, without waiting for the device (:class:`_DeviceCount`).
"""

from sae_lens_ext.training.sparse.codes import (
    Activation,
    AffineMap,
    BatchTopK,
    JumpReLU,
    ReLU,
    SparseCodes,
    SparseEncoding,
    TopK,
    WindowPairs,
    _host_batch_topk,  # noqa: F401  (tests)
    accumulate,
    active_entries,
    attach_codes,
    codes_of,
    decode_sparse,
    decoder_weighted_l1,
    encode_sparse,
    encoder_input,
    gram,
    row_offsets,
    window_pairs,
    window_variation,
)
from sae_lens_ext.training.sparse.step import (
    CHECK_EVERY,
    DENSITY_THRESHOLDS,
    HYSTERESIS,
    MIN_PRODUCT,
    MODES,
    SparseEncoder,
    SparseStepFields,
    SparseStepMixin,
    SparseStepMode,
    SparseStepSwitch,
    has_hooks,
    load_switch_state,
    save_switch_state,
)

__all__ = [
    "CHECK_EVERY",
    "DENSITY_THRESHOLDS",
    "HYSTERESIS",
    "MIN_PRODUCT",
    "MODES",
    "Activation",
    "AffineMap",
    "BatchTopK",
    "JumpReLU",
    "ReLU",
    "SparseCodes",
    "SparseEncoder",
    "SparseEncoding",
    "SparseStepFields",
    "SparseStepMixin",
    "SparseStepMode",
    "SparseStepSwitch",
    "TopK",
    "WindowPairs",
    "accumulate",
    "active_entries",
    "attach_codes",
    "codes_of",
    "decode_sparse",
    "decoder_weighted_l1",
    "encode_sparse",
    "encoder_input",
    "gram",
    "has_hooks",
    "load_switch_state",
    "row_offsets",
    "save_switch_state",
    "window_pairs",
    "window_variation",
]
