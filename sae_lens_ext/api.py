"""The public plugin API of sae-lens-ext: everything a plugin may import.

Import from here, and only from here::

    from sae_lens_ext.api import hookimpl, LossTerm, LossContext

Every other module of ``sae_lens_ext`` is private and may change in any release; the
names below follow semantic versioning. Importing this module is cheap (no torch, no
sae_lens): the names that need them are loaded on first use, so a plugin's entry module
can import ``hookimpl`` at its top. The hooks themselves are documented in
``sae_lens_ext.hookspecs`` and docs/hooks.md; docs/writing-a-plugin.md teaches the whole
contract with a complete example.

Groups:

- hooks: :data:`hookimpl`;
- registration: :class:`Architecture`, :class:`LossTerm`;
- the architecture contract: :class:`PluginSAE` (inference), :class:`LossTermTrainingSAE`
  and :class:`LossTermTrainingSAEConfig` (training), :class:`LossTermsMixin` (loss terms
  on any SAE-Lens training class), the latent table (:class:`LatentAxis`,
  :func:`latent_parameters`, :func:`permute_latents`, :func:`fold_decoder_norms`), the
  protocols the core asks of an SAE (:class:`DeclaresLatentParameters`,
  :class:`AfterOptimizerStep`, :class:`BatchWindowConfig`, :class:`ArchitectureWindowConfig`);
- loss terms: :func:`evaluate_loss_terms` (a training class of your own runs its terms),
  :class:`LossContext`, :class:`LossTermSpec`, :class:`BatchCollectives`,
  :func:`term_option`, :func:`decoder_weighted_sparsity`, :func:`check_non_negative`;
- resampling: :class:`ResampleRequest`, :class:`ResampleResult`, :func:`request_after_step`;
- evaluation and figures: :class:`Metric`, :class:`EvalData`, :func:`explained_variance`,
  :func:`firing_frequencies`, :func:`seed_consistency`, :func:`encode_batches`,
  :func:`batch_rows_for`, :func:`pyplot`, :func:`save_figure`, :class:`RunResults` (a saved
  run folder, what ``compare_figures`` reads);
- presets and the run's length: :class:`Preset`, :class:`PresetError`, :func:`get_preset`,
  :func:`make_trainer` (upstream's ``SAETrainer``, after telling the SAE the run's length);
- ``sae-lens browse`` panels: :class:`BrowserData`, :class:`Panel`, :func:`svg_bar_chart`,
  :func:`svg_line_chart`;
- ``sae-lens demo``: :class:`DemoSetup`, :class:`DemoData`, :class:`DemoDataOptions`;
  sequences whose features persist over positions (:class:`SyntheticSequences`,
  :class:`SyntheticSequenceConfig`, :class:`SequenceDemoData`) and their lag-1
  autocorrelation in ``sae-lens browse`` (:func:`lag1_autocorrelation`, with the alive
  rule :data:`ALIVE_VAR_EPS`);
- windows of consecutive positions: :func:`batch_window`, :func:`shared_window`,
  :func:`validate_window_layout`, :func:`check_step_layout`, :func:`mark_layout_served`,
  :class:`BatchLayoutError`, :class:`WindowShuffledBatches`, :class:`WindowBuffer`,
  :class:`WindowShuffledLMBatches`;
- upstream architectures with loss terms: :func:`twin_name`;
- errors a plugin causes: :class:`PluginError`, :class:`LossTermNotFinite`,
  :class:`PluginWarning`; logging steps of a loop of your own: :func:`set_logging_step`,
  :func:`is_logging_step`;
- a trained SAE in a local model: :func:`load_hooked_sae_transformer`,
  :func:`transformer_lens_hook_name`, :func:`splice_sae`;
- the sparse training step (docs/sparse-step.md): :class:`SparseStepFields` and
  :class:`SparseStepMixin` (the ``sparse_step`` setting and its switch), the encoder's map
  and activations (:class:`AffineMap`, :class:`SparseEncoder`, :class:`ReLU`,
  :class:`JumpReLU`, :class:`TopK`, :class:`BatchTopK`), the active entries
  (:class:`SparseCodes`, :func:`codes_of`, :func:`encode_sparse`, :func:`decode_sparse`)
  and penalties read from them (:func:`decoder_weighted_l1`, :func:`window_variation`,
  :func:`gram`);
- notebooks and tests: :func:`load_plugins`, :func:`register_plugin`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sae_lens_ext.hookspecs import hookimpl

if TYPE_CHECKING:
    from sae_lens_ext.architectures import Architecture
    from sae_lens_ext.browse.data import BrowserData, Panel
    from sae_lens_ext.browse.svg import bar_chart as svg_bar_chart
    from sae_lens_ext.browse.svg import line_chart as svg_line_chart
    from sae_lens_ext.data.sequences import (
        ALIVE_VAR_EPS,
        SequenceDemoData,
        SyntheticSequenceConfig,
        SyntheticSequences,
        lag1_autocorrelation,
    )
    from sae_lens_ext.data.synthetic import DemoData, DemoDataOptions, DemoSetup
    from sae_lens_ext.data.windows import (
        ArchitectureWindowConfig,
        BatchLayoutError,
        BatchWindowConfig,
        WindowBuffer,
        WindowShuffledBatches,
        WindowShuffledLMBatches,
        batch_window,
        check_step_layout,
        mark_layout_served,
        shared_window,
        validate_window_layout,
    )
    from sae_lens_ext.hooked import (
        load_hooked_sae_transformer,
        splice_sae,
        transformer_lens_hook_name,
    )
    from sae_lens_ext.metrics import (
        EvalData,
        Metric,
        batch_rows_for,
        encode_batches,
        explained_variance,
        firing_frequencies,
        seed_consistency,
    )
    from sae_lens_ext.plugins import (
        LossTermNotFinite,
        PluginError,
        PluginWarning,
        get_preset,
        load_plugins,
        register_plugin,
    )
    from sae_lens_ext.presets import Preset, PresetError
    from sae_lens_ext.run.figures import pyplot, save_figure
    from sae_lens_ext.run.results import RunResults
    from sae_lens_ext.training.after_step import AfterOptimizerStep, request_after_step
    from sae_lens_ext.training.latents import (
        DeclaresLatentParameters,
        LatentAxis,
        LatentTableError,
        fold_decoder_norms,
        latent_parameters,
        permute_latents,
    )
    from sae_lens_ext.training.loss_terms import (
        BatchCollectives,
        LossContext,
        LossTerm,
        LossTermSpec,
        is_logging_step,
        parse_options,
        set_logging_step,
    )
    from sae_lens_ext.training.loss_terms import resolve_option as term_option
    from sae_lens_ext.training.resampling import ResampleRequest, ResampleResult
    from sae_lens_ext.training.sae import (
        LossTermsMixin,
        LossTermTrainingSAE,
        LossTermTrainingSAEConfig,
        PluginSAE,
        check_non_negative,
        decoder_weighted_sparsity,
        evaluate_loss_terms,
        make_trainer,
    )
    from sae_lens_ext.training.sparse import (
        Activation,
        AffineMap,
        BatchTopK,
        JumpReLU,
        ReLU,
        SparseCodes,
        SparseEncoder,
        SparseEncoding,
        SparseStepFields,
        SparseStepMixin,
        SparseStepMode,
        SparseStepSwitch,
        TopK,
        WindowPairs,
        accumulate,
        active_entries,
        attach_codes,
        codes_of,
        decode_sparse,
        decoder_weighted_l1,
        encode_sparse,
        encoder_input,
        gram,
        has_hooks,
        load_switch_state,
        save_switch_state,
        window_pairs,
        window_variation,
    )
    from sae_lens_ext.training.twins import twin_name

#: Public name -> (private module, name there). Loaded on first access.
_LAZY: dict[str, tuple[str, str]] = {
    "Architecture": ("sae_lens_ext.architectures", "Architecture"),
    "BrowserData": ("sae_lens_ext.browse.data", "BrowserData"),
    "Panel": ("sae_lens_ext.browse.data", "Panel"),
    "svg_bar_chart": ("sae_lens_ext.browse.svg", "bar_chart"),
    "svg_line_chart": ("sae_lens_ext.browse.svg", "line_chart"),
    "DeclaresLatentParameters": ("sae_lens_ext.training.latents", "DeclaresLatentParameters"),
    "LatentAxis": ("sae_lens_ext.training.latents", "LatentAxis"),
    "LatentTableError": ("sae_lens_ext.training.latents", "LatentTableError"),
    "fold_decoder_norms": ("sae_lens_ext.training.latents", "fold_decoder_norms"),
    "latent_parameters": ("sae_lens_ext.training.latents", "latent_parameters"),
    "permute_latents": ("sae_lens_ext.training.latents", "permute_latents"),
    "BatchCollectives": ("sae_lens_ext.training.loss_terms", "BatchCollectives"),
    "LossContext": ("sae_lens_ext.training.loss_terms", "LossContext"),
    "LossTerm": ("sae_lens_ext.training.loss_terms", "LossTerm"),
    "LossTermSpec": ("sae_lens_ext.training.loss_terms", "LossTermSpec"),
    "parse_options": ("sae_lens_ext.training.loss_terms", "parse_options"),
    "term_option": ("sae_lens_ext.training.loss_terms", "resolve_option"),
    "EvalData": ("sae_lens_ext.metrics", "EvalData"),
    "Metric": ("sae_lens_ext.metrics", "Metric"),
    "batch_rows_for": ("sae_lens_ext.metrics", "batch_rows_for"),
    "encode_batches": ("sae_lens_ext.metrics", "encode_batches"),
    "explained_variance": ("sae_lens_ext.metrics", "explained_variance"),
    "firing_frequencies": ("sae_lens_ext.metrics", "firing_frequencies"),
    "seed_consistency": ("sae_lens_ext.metrics", "seed_consistency"),
    "load_hooked_sae_transformer": ("sae_lens_ext.hooked", "load_hooked_sae_transformer"),
    "splice_sae": ("sae_lens_ext.hooked", "splice_sae"),
    "transformer_lens_hook_name": ("sae_lens_ext.hooked", "transformer_lens_hook_name"),
    "is_logging_step": ("sae_lens_ext.training.loss_terms", "is_logging_step"),
    "set_logging_step": ("sae_lens_ext.training.loss_terms", "set_logging_step"),
    "LossTermNotFinite": ("sae_lens_ext.plugins", "LossTermNotFinite"),
    "PluginError": ("sae_lens_ext.plugins", "PluginError"),
    "PluginWarning": ("sae_lens_ext.plugins", "PluginWarning"),
    "load_plugins": ("sae_lens_ext.plugins", "load_plugins"),
    "register_plugin": ("sae_lens_ext.plugins", "register_plugin"),
    "Preset": ("sae_lens_ext.presets", "Preset"),
    "PresetError": ("sae_lens_ext.presets", "PresetError"),
    "get_preset": ("sae_lens_ext.plugins", "get_preset"),
    "make_trainer": ("sae_lens_ext.training.sae", "make_trainer"),
    "evaluate_loss_terms": ("sae_lens_ext.training.sae", "evaluate_loss_terms"),
    "AfterOptimizerStep": ("sae_lens_ext.training.after_step", "AfterOptimizerStep"),
    "ResampleRequest": ("sae_lens_ext.training.resampling", "ResampleRequest"),
    "ResampleResult": ("sae_lens_ext.training.resampling", "ResampleResult"),
    "request_after_step": ("sae_lens_ext.training.after_step", "request_after_step"),
    "pyplot": ("sae_lens_ext.run.figures", "pyplot"),
    "save_figure": ("sae_lens_ext.run.figures", "save_figure"),
    "RunResults": ("sae_lens_ext.run.results", "RunResults"),
    "Activation": ("sae_lens_ext.training.sparse", "Activation"),
    "AffineMap": ("sae_lens_ext.training.sparse", "AffineMap"),
    "BatchTopK": ("sae_lens_ext.training.sparse", "BatchTopK"),
    "JumpReLU": ("sae_lens_ext.training.sparse", "JumpReLU"),
    "ReLU": ("sae_lens_ext.training.sparse", "ReLU"),
    "SparseCodes": ("sae_lens_ext.training.sparse", "SparseCodes"),
    "SparseEncoder": ("sae_lens_ext.training.sparse", "SparseEncoder"),
    "SparseEncoding": ("sae_lens_ext.training.sparse", "SparseEncoding"),
    "SparseStepFields": ("sae_lens_ext.training.sparse", "SparseStepFields"),
    "SparseStepMixin": ("sae_lens_ext.training.sparse", "SparseStepMixin"),
    "SparseStepMode": ("sae_lens_ext.training.sparse", "SparseStepMode"),
    "SparseStepSwitch": ("sae_lens_ext.training.sparse", "SparseStepSwitch"),
    "TopK": ("sae_lens_ext.training.sparse", "TopK"),
    "WindowPairs": ("sae_lens_ext.training.sparse", "WindowPairs"),
    "accumulate": ("sae_lens_ext.training.sparse", "accumulate"),
    "active_entries": ("sae_lens_ext.training.sparse", "active_entries"),
    "attach_codes": ("sae_lens_ext.training.sparse", "attach_codes"),
    "codes_of": ("sae_lens_ext.training.sparse", "codes_of"),
    "decode_sparse": ("sae_lens_ext.training.sparse", "decode_sparse"),
    "decoder_weighted_l1": ("sae_lens_ext.training.sparse", "decoder_weighted_l1"),
    "encode_sparse": ("sae_lens_ext.training.sparse", "encode_sparse"),
    "encoder_input": ("sae_lens_ext.training.sparse", "encoder_input"),
    "gram": ("sae_lens_ext.training.sparse", "gram"),
    "has_hooks": ("sae_lens_ext.training.sparse", "has_hooks"),
    "load_switch_state": ("sae_lens_ext.training.sparse", "load_switch_state"),
    "save_switch_state": ("sae_lens_ext.training.sparse", "save_switch_state"),
    "window_pairs": ("sae_lens_ext.training.sparse", "window_pairs"),
    "window_variation": ("sae_lens_ext.training.sparse", "window_variation"),
    "DemoData": ("sae_lens_ext.data.synthetic", "DemoData"),
    "SequenceDemoData": ("sae_lens_ext.data.sequences", "SequenceDemoData"),
    "SyntheticSequenceConfig": ("sae_lens_ext.data.sequences", "SyntheticSequenceConfig"),
    "SyntheticSequences": ("sae_lens_ext.data.sequences", "SyntheticSequences"),
    "lag1_autocorrelation": ("sae_lens_ext.data.sequences", "lag1_autocorrelation"),
    "ALIVE_VAR_EPS": ("sae_lens_ext.data.sequences", "ALIVE_VAR_EPS"),
    "DemoDataOptions": ("sae_lens_ext.data.synthetic", "DemoDataOptions"),
    "DemoSetup": ("sae_lens_ext.data.synthetic", "DemoSetup"),
    "LossTermsMixin": ("sae_lens_ext.training.sae", "LossTermsMixin"),
    "LossTermTrainingSAE": ("sae_lens_ext.training.sae", "LossTermTrainingSAE"),
    "LossTermTrainingSAEConfig": ("sae_lens_ext.training.sae", "LossTermTrainingSAEConfig"),
    "PluginSAE": ("sae_lens_ext.training.sae", "PluginSAE"),
    "check_non_negative": ("sae_lens_ext.training.sae", "check_non_negative"),
    "decoder_weighted_sparsity": ("sae_lens_ext.training.sae", "decoder_weighted_sparsity"),
    "twin_name": ("sae_lens_ext.training.twins", "twin_name"),
    "ArchitectureWindowConfig": ("sae_lens_ext.data.windows", "ArchitectureWindowConfig"),
    "BatchLayoutError": ("sae_lens_ext.data.windows", "BatchLayoutError"),
    "BatchWindowConfig": ("sae_lens_ext.data.windows", "BatchWindowConfig"),
    "WindowBuffer": ("sae_lens_ext.data.windows", "WindowBuffer"),
    "WindowShuffledBatches": ("sae_lens_ext.data.windows", "WindowShuffledBatches"),
    "WindowShuffledLMBatches": ("sae_lens_ext.data.windows", "WindowShuffledLMBatches"),
    "batch_window": ("sae_lens_ext.data.windows", "batch_window"),
    "check_step_layout": ("sae_lens_ext.data.windows", "check_step_layout"),
    "mark_layout_served": ("sae_lens_ext.data.windows", "mark_layout_served"),
    "shared_window": ("sae_lens_ext.data.windows", "shared_window"),
    "validate_window_layout": ("sae_lens_ext.data.windows", "validate_window_layout"),
}

__all__ = [
    "ALIVE_VAR_EPS",
    "Activation",
    "AffineMap",
    "AfterOptimizerStep",
    "Architecture",
    "ArchitectureWindowConfig",
    "BatchCollectives",
    "BatchLayoutError",
    "BatchTopK",
    "BatchWindowConfig",
    "BrowserData",
    "DeclaresLatentParameters",
    "DemoData",
    "DemoDataOptions",
    "DemoSetup",
    "EvalData",
    "JumpReLU",
    "LatentAxis",
    "LatentTableError",
    "LossContext",
    "LossTerm",
    "LossTermNotFinite",
    "LossTermSpec",
    "LossTermTrainingSAE",
    "LossTermTrainingSAEConfig",
    "LossTermsMixin",
    "Metric",
    "Panel",
    "PluginError",
    "PluginSAE",
    "PluginWarning",
    "Preset",
    "PresetError",
    "ReLU",
    "ResampleRequest",
    "ResampleResult",
    "RunResults",
    "SequenceDemoData",
    "SparseCodes",
    "SparseEncoder",
    "SparseEncoding",
    "SparseStepFields",
    "SparseStepMixin",
    "SparseStepMode",
    "SparseStepSwitch",
    "SyntheticSequenceConfig",
    "SyntheticSequences",
    "TopK",
    "WindowBuffer",
    "WindowPairs",
    "WindowShuffledBatches",
    "WindowShuffledLMBatches",
    "accumulate",
    "active_entries",
    "attach_codes",
    "batch_rows_for",
    "batch_window",
    "check_non_negative",
    "check_step_layout",
    "codes_of",
    "decode_sparse",
    "decoder_weighted_l1",
    "decoder_weighted_sparsity",
    "encode_batches",
    "encode_sparse",
    "encoder_input",
    "evaluate_loss_terms",
    "explained_variance",
    "firing_frequencies",
    "fold_decoder_norms",
    "get_preset",
    "gram",
    "has_hooks",
    "hookimpl",
    "is_logging_step",
    "lag1_autocorrelation",
    "latent_parameters",
    "load_hooked_sae_transformer",
    "load_plugins",
    "load_switch_state",
    "make_trainer",
    "mark_layout_served",
    "parse_options",
    "permute_latents",
    "pyplot",
    "register_plugin",
    "request_after_step",
    "save_figure",
    "save_switch_state",
    "seed_consistency",
    "set_logging_step",
    "shared_window",
    "splice_sae",
    "svg_bar_chart",
    "svg_line_chart",
    "term_option",
    "transformer_lens_hook_name",
    "twin_name",
    "validate_window_layout",
    "window_pairs",
    "window_variation",
]


#: Modules that import neither torch nor sae_lens at import time.
_LIGHT = {
    "sae_lens_ext.architectures",
    "sae_lens_ext.training.loss_terms",
    "sae_lens_ext.plugins",
    "sae_lens_ext.presets",
    "sae_lens_ext.training.resampling",
}


def __getattr__(name: str) -> Any:
    """Load a public name from its private module on first access (keeps import cheap)."""
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    if module not in _LIGHT:
        # sae_lens first: its import registers the plugins, whose modules import names from
        # here; they must find this name's module complete, not half-imported
        importlib.import_module("sae_lens")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
