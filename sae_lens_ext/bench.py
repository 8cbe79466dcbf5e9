"""Evaluate any SAE-Lens SAE with SAE-Bench's own evaluation code.

:func:`run_bench` runs SAE-Bench's evaluations (``core``, ``absorption``,
``sparse_probing``, ``sparse_probing_sae_probes``, ``scr``, ``tpp``) on one SAE and
writes each result where SAE-Bench's tooling looks for it:
``OUTPUT_DIR/<bench>/<release>_<sae_id>_eval_results.json``, in SAE-Bench's own
output format (the pydantic classes of each eval's ``eval_output.py``).

Where the metrics come from: each eval runs through SAE-Bench's own per-SAE
functions, which take a model object (``core.main.run_evals``,
``absorption``'s two experiments, ``run_eval_single_sae`` of sparse probing and of
SCR/TPP) or SAE-Bench's own ``run_eval`` where it loads no model
(``sparse_probing_sae_probes``, after sae-probes' own ``ensure_dataset_activations``
has cached the model's activations from the model object). Only what SAE-Bench's
``run_eval`` functions do around those calls is done here: loading the model
(SAE-Bench loads it by hub name only), choosing scratch folders (SAE-Bench's
defaults are in the working directory and inside its installed package), and
packing the results into SAE-Bench's output classes exactly as its ``run_eval``
does. No SAE-Bench module is patched.

The model is a TransformerLens ``HookedTransformer`` (SAE-Bench's evals are typed
and written against it). A local folder written by ``save_pretrained`` (as
``sae-lens train --model_class_name AutoModelForCausalLM --model_name ./dir`` takes)
is converted with TransformerLens' own loaders. An SAE trained on a Hugging Face
module (e.g. ``transformer.h.3``, the output of a decoder layer) is evaluated at the
same activations under their TransformerLens name (``blocks.3.hook_resid_post``),
after checking on a few tokens that both give the same numbers.

This module is architecture-agnostic and keeps its heavy imports inside functions.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

BENCHES = ("core", "absorption", "sparse_probing", "sparse_probing_sae_probes", "scr", "tpp")
# sae-probes sparse probing: the most reliable SAE-Bench metric in Chanin's audit
# ("Are Sparse Autoencoder Benchmarks Reliable?", 2026), which found SCR and TPP
# unreliable at their canonical settings; core and absorption need no labelled data.
DEFAULT_BENCHES = ("core", "absorption", "sparse_probing_sae_probes")

# What each bench reads besides the model (SAE-Bench 0.6.0), for docs and errors.
BENCH_DATA = {
    "core": "a text dataset (`dataset`, default Skylion007/openwebtext)",
    "absorption": "nothing: prompts are built from the model's vocabulary",
    "sparse_probing": "LabHC/bias_in_bios, canrager/amazon_reviews_mcauley_1and5, "
    "codeparrot/github-code, fancyzhx/ag_news, Helsinki-NLP/europarl",
    "sparse_probing_sae_probes": "nothing: its datasets ship with the sae-probes package",
    "scr": "LabHC/bias_in_bios, canrager/amazon_reviews_mcauley_1and5",
    "tpp": "LabHC/bias_in_bios, canrager/amazon_reviews_mcauley_1and5",
}

# core: every metric group on, as SAE-Bench's core CLI and `multiple_evals` set them
# (get_multiple_evals_everything_config + compute_featurewise_* in run_evaluations).
CORE_METRICS = {
    "compute_kl": True,
    "compute_ce_loss": True,
    "compute_l2_norms": True,
    "compute_sparsity_metrics": True,
    "compute_variance_metrics": True,
    "compute_featurewise_density_statistics": True,
    "compute_featurewise_weight_based_metrics": True,
}
CORE_SHUFFLE_SEED = 42  # core.main.multiple_evals: activation_store.shuffle_input_dataset(seed=42)


# Each bench's SAE-Bench config class: sae_bench.evals.<module>.eval_config.<name>
CONFIG_CLASSES = {
    "core": ("core", "CoreEvalConfig"),
    "absorption": ("absorption", "AbsorptionEvalConfig"),
    "sparse_probing": ("sparse_probing", "SparseProbingEvalConfig"),
    "sparse_probing_sae_probes": ("sparse_probing_sae_probes", "SparseProbingSaeProbesEvalConfig"),
    "scr": ("scr_and_tpp", "ScrAndTppEvalConfig"),
    "tpp": ("scr_and_tpp", "ScrAndTppEvalConfig"),
}


#: SAE-Bench hub datasets that cannot be copied under ``data_dir`` (configs per language
#: pair; a dataset script): without the hub, leave them out of ``dataset_names``.
NOT_COPYABLE = ("Helsinki-NLP/europarl", "codeparrot/github-code")

#: How :meth:`BenchDataError.advice` names the settings (Python: ``BenchSettings`` fields;
#: ``{names}``: the dataset names to keep, comma-separated, ``{names_list}``: as a list).
PYTHON_NAMES = {
    "dataset": "dataset=PATH",
    "data_dir": "data_dir=DATA_DIR",
    "model": "model_name=DIR",
    "dataset_names": "overrides['{bench}']['dataset_names'] = {names_list}",
}


class BenchDataError(RuntimeError):
    """A dataset or model an evaluation needs could not be loaded.

    ``str()`` is one line for Python callers; :meth:`advice` words the same fix with other
    setting names (the command line's flags)."""

    def __init__(
        self,
        *,
        reason: str,
        bench: str = "",
        hub_ids: Sequence[str] = (),
        dataset_names: Sequence[str] = (),
        model: str = "",
    ) -> None:
        self.reason, self.bench, self.model = reason, bench, model
        self.hub_ids, self.dataset_names = list(hub_ids), list(dataset_names)
        super().__init__(self.advice(PYTHON_NAMES))

    def advice(self, names: Mapping[str, str]) -> str:
        """The message, naming settings as ``names`` does (keys of :data:`PYTHON_NAMES`)."""
        if self.model:
            return (
                f"model {self.model!r} could not be loaded ({self.reason}): connect to the "
                f"Hugging Face Hub, or pass {names['model']}, a folder written by save_pretrained"
            )
        copyable = [h for h in self.hub_ids if h not in NOT_COPYABLE]
        fixed = [h for h in self.hub_ids if h in NOT_COPYABLE]
        local = f"a local copy ({names['dataset']}) or " if self.bench == "core" else ""
        message = (
            f"{self.bench} needs dataset(s) {', '.join(self.hub_ids)} ({self.reason}): connect "
            "to the Hugging Face Hub"
        )
        if copyable:
            message += (
                f", or provide {local}copies of {', '.join(copyable)} as DATA_DIR/<hub id>/ "
                f"with its train and test splits and give {names['data_dir']}"
            )
        if fixed:
            kept = [n for n in self.dataset_names if hub_datasets([n])[0] not in NOT_COPYABLE]
            setting = names["dataset_names"].format(
                bench=self.bench, names=",".join(kept), names_list=repr(kept)
            )
            message += (
                f"; {', '.join(fixed)} cannot be copied that way: leave "
                f"{'it' if len(fixed) == 1 else 'them'} out with {setting}"
            )
        return message


# Benches that encode single-token activations taken out of their prompts (2-D rows from
# different prompts; SAE-Bench 0.6.0's k-sparse probing and absorption calculator, and
# sae-probes). The others encode whole sequences (batch, seq, d_in).
SINGLE_TOKEN_BENCHES = ("absorption", "sparse_probing_sae_probes")


class OutOfContextError(ValueError):
    """Benches that would feed single tokens to an SAE whose encoder reads several
    consecutive positions together: its code of such rows is not defined."""


class ModelTooSmallError(ValueError):
    """The model cannot serve a bench: absorption finds too few first letters that a
    probe reads from its vocabulary (SAE-Bench recommends models of 2B parameters or more)."""


def encoder_window(cfg: Any) -> int:
    """Consecutive positions the SAE's encoder reads together: its config's
    ``architecture_window()`` (see docs/hooks.md), 1 without one."""
    window = getattr(cfg, "architecture_window", None)
    return int(window()) if callable(window) else 1


def out_of_context_benches(cfg: Any, benches: Sequence[str]) -> list[str]:
    """The ``benches`` that cannot evaluate an SAE of config ``cfg`` (see
    :data:`SINGLE_TOKEN_BENCHES`): none unless its encoder window is over 1."""
    if encoder_window(cfg) <= 1:
        return []
    return [bench for bench in benches if bench in SINGLE_TOKEN_BENCHES]


def out_of_context_reason(cfg: Any, benches: Sequence[str]) -> str:
    """Why ``benches`` (from :func:`out_of_context_benches`) cannot run, in one line."""
    return (
        f"{', '.join(benches)}: SAE-Bench encodes single tokens taken out of their prompts "
        f"there, but this SAE's encoder reads {encoder_window(cfg)} consecutive positions "
        "together (its cfg's architecture_window(), e.g. attention); its code of a lone token "
        "is not defined (core, sparse_probing, scr and tpp encode whole sequences)"
    )


@dataclass
class BenchSettings:
    """How to run the evaluations. ``None`` means SAE-Bench's own default.

    Args:
        model_name: the model the SAE reads: a TransformerLens name (``gemma-2-2b``),
            a hub id, or a local folder written by ``save_pretrained``. Default: the
            SAE's ``cfg.metadata.model_name``.
        dataset: core's text dataset: a hub id or a local path, as
            ``sae-lens train --dataset_path`` (default ``CoreEvalConfig.dataset``).
        context_size: core's ``context_size`` and the probing evals' ``context_length``
            (defaults ``CoreEvalConfig.context_size``, ``*EvalConfig.context_length``).
        batch_size_prompts: core's prompts per batch (``CoreEvalConfig.batch_size_prompts``).
        llm_batch_size: prompts per model batch of absorption, sparse probing, SCR and
            TPP (default: SAE-Bench's ``LLM_NAME_TO_BATCH_SIZE`` for its models, else
            ``CoreEvalConfig.batch_size_prompts``).
        sae_batch_size: SAE batch of sparse probing, SCR and TPP (``*.sae_batch_size``).
        device: default ``cuda`` when available, else ``cpu``.
        dtype: the model's and SAE's dtype (default: SAE-Bench's ``LLM_NAME_TO_DTYPE``
            for its models, else ``CoreEvalConfig.llm_dtype``).
        random_seed: the evals' ``random_seed`` (default each config's, 42).
        data_dir: a folder holding local copies of SAE-Bench's hub datasets under their
            hub ids (``DATA_DIR/LabHC/bias_in_bios/{train,test}.parquet``...): the
            evals run with it as working directory, where ``datasets.load_dataset``
            reads a local folder before the hub.
        overrides: any other field of an eval's SAE-Bench config class, by bench
            (``{"scr": {"n_values": [2, 5, 10, 20]}}``); unknown fields are an error.
    """

    model_name: str | None = None
    dataset: str | None = None
    context_size: int | None = None
    batch_size_prompts: int | None = None
    llm_batch_size: int | None = None
    sae_batch_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    random_seed: int | None = None
    data_dir: str | Path | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class BenchRun:
    """One SAE and its model, prepared for SAE-Bench (what each bench runner reads)."""

    sae: SAE
    model: HookedTransformer
    release: str
    sae_id: str
    model_name: str
    sae_hook_name: str
    device: str
    llm_dtype: str
    settings: BenchSettings
    output_dir: Path
    scratch: Path
    eval_id: str

    @property
    def sae_name(self) -> str:
        return f"{self.release}_{self.sae_id}"

    def result_path(self, bench: str) -> Path:
        """SAE-Bench's file for this SAE (general_utils.get_results_filepath)."""
        from sae_bench.sae_bench_utils import general_utils

        folder = self.output_dir / bench
        folder.mkdir(parents=True, exist_ok=True)
        return Path(general_utils.get_results_filepath(str(folder), self.release, self.sae_id))

    def config(self, bench: str, **values: Any) -> Any:
        """SAE-Bench's config of ``bench`` with ``values`` (``None``: its default), then overrides."""
        config_class = sae_bench_config_class(bench)
        names = {f.name for f in dataclasses.fields(config_class)}
        chosen = {k: v for k, v in values.items() if v is not None and k in names}
        return config_class(**{**chosen, **self.settings.overrides.get(bench, {})})


ExtraMetrics = Callable[[BenchRun], Mapping[str, Any]]


def run_bench(
    sae: SAE | str | Path,
    benches: Sequence[str] = DEFAULT_BENCHES,
    settings: BenchSettings | None = None,
    output_dir: str | Path = "eval_results",
    *,
    name: str | None = None,
    extra_metrics: ExtraMetrics | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Run SAE-Bench's ``benches`` on one SAE; return each result file by bench.

    Args:
        sae: an ``SAE`` object, a folder for ``SAE.load_from_disk``, or a hub id
            ``release/sae_id`` (loaded as SAE-Bench loads it: ``from_pretrained``,
            then ``fold_W_dec_norm``).
        benches: names from :data:`BENCHES`.
        settings: see :class:`BenchSettings`.
        output_dir: results go to ``output_dir/<bench>/<release>_<sae_id>_eval_results.json``.
        name: the ``release`` part of the file name for an object or a folder
            (default: the folder's name, or ``custom``); their ``sae_id`` is
            ``custom_sae``, as SAE-Bench names custom SAEs.
        extra_metrics: called once with the prepared :class:`BenchRun`; what it
            returns is written beside SAE-Bench's results, to
            ``output_dir/sae_lens_ext/<release>_<sae_id>_eval_results.json``
            (key ``sae_lens_ext`` of the returned dict).
        progress: called with a line when each bench (and ``extra_metrics``) starts and
            ends; core also shows SAE-Bench's own batch bars (its ``verbose``).

    The SAE is moved to the evaluation device and dtype (as SAE-Bench's ``run_eval``
    does); its cfg is left as it was.
    """
    settings = settings or BenchSettings()
    check_benches(benches, settings)
    paths: dict[str, Path] = {}
    with (
        prepared_run(sae, settings, output_dir, name=name, benches=benches) as run,
        _grad_mode_restored(),
    ):
        say = progress or (lambda line: None)
        steps = [*benches, *(["sae_lens_ext"] if extra_metrics is not None else [])]
        for i, bench in enumerate(steps, 1):
            say(f"[{i}/{len(steps)}] {bench}: running")
            t0 = time.perf_counter()
            if bench == "sae_lens_ext":
                paths[bench] = write_extra_results(run, extra_metrics(run))  # type: ignore[misc]
            else:
                with _tokenizer_restored(run.model.tokenizer):  # sae-probes changes its sides
                    paths[bench] = RUNNERS[bench](run)
            say(f"[{i}/{len(steps)}] {bench}: done in {time.perf_counter() - t0:.0f}s")
    return paths


def check_benches(benches: Sequence[str], settings: BenchSettings) -> None:
    """Fail early on an unknown bench or an override SAE-Bench's config has no field for."""
    unknown = sorted(set(benches) - set(BENCHES))
    if unknown:
        raise ValueError(f"unknown benches {unknown}; choose from {list(BENCHES)}")
    for bench, overrides in settings.overrides.items():
        if bench not in BENCHES:
            raise ValueError(f"overrides: unknown bench {bench!r}; choose from {list(BENCHES)}")
        if bench not in benches:
            continue  # importing some configs is slow (sae-probes reads its datasets)
        config_class = sae_bench_config_class(bench)
        names = {f.name for f in dataclasses.fields(config_class)}
        extra = sorted(set(overrides) - names)
        if extra:
            raise ValueError(
                f"overrides[{bench!r}]: {extra} are not fields of SAE-Bench's "
                f"{config_class.__name__} ({sorted(names)})"
            )


def sae_bench_config_class(bench: str) -> type:
    """SAE-Bench's config class of ``bench`` (its defaults are this module's defaults)."""
    import importlib

    module, name = CONFIG_CLASSES[bench]
    return getattr(importlib.import_module(f"sae_bench.evals.{module}.eval_config"), name)


@contextlib.contextmanager
def prepared_run(
    sae: SAE | str | Path,
    settings: BenchSettings,
    output_dir: str | Path,
    *,
    name: str | None = None,
    benches: Sequence[str] = (),
) -> Iterator[BenchRun]:
    """The SAE and its model, set up as SAE-Bench expects them, for the ``with`` block;
    :class:`OutOfContextError` (before the model loads) if ``benches`` cannot evaluate it."""
    from sae_bench.sae_bench_utils import general_utils, get_eval_uuid

    device = settings.device or _default_device()
    sae_obj, release, sae_id = load_sae(sae, device=device, name=name)
    unfit = out_of_context_benches(sae_obj.cfg, benches)
    if unfit:
        raise OutOfContextError(f"{out_of_context_reason(sae_obj.cfg, unfit)}; leave them out")
    metadata = sae_obj.cfg.metadata
    model_name = _resolve_path(settings.model_name or metadata.model_name)
    if not metadata.hook_name:
        raise ValueError("the SAE's cfg.metadata has no hook_name: SAE-Bench needs one")
    if not model_name:
        raise ValueError("the SAE's cfg.metadata has no model_name: set BenchSettings.model_name")
    llm_dtype = settings.dtype or _sae_bench_dtype(model_name)
    model, hook_name = load_hooked_transformer(
        model_name,
        metadata.hook_name,
        device=device,
        dtype=llm_dtype,
        from_pretrained_kwargs=metadata.model_from_pretrained_kwargs,
    )
    sae_obj.to(device=device, dtype=_torch_dtype(llm_dtype))
    fields: dict[str, Any] = {"model_name": model_name, "hook_name": hook_name}
    if metadata.prepend_bos is None:
        fields["prepend_bos"] = model.cfg.default_prepend_bos
    # paths the user gave are relative to this working directory, not to data_dir
    settings = dataclasses.replace(settings, dataset=_resolve_path(settings.dataset))
    output_dir = Path(output_dir).resolve()
    with (
        _bench_cfg(sae_obj, **fields),
        tempfile.TemporaryDirectory(prefix="sae_bench_") as scratch,
        _working_directory(settings.data_dir),
    ):
        general_utils.load_and_format_sae(release, sae_obj, device)  # SAE-Bench's cfg fields
        yield BenchRun(
            sae=sae_obj,
            model=model,
            release=release,
            sae_id=sae_id,
            model_name=model_name,
            sae_hook_name=metadata.hook_name,
            device=device,
            llm_dtype=llm_dtype,
            settings=settings,
            output_dir=output_dir,
            scratch=Path(scratch),
            eval_id=get_eval_uuid(),
        )


# --- loading -----------------------------------------------------------------------------


def load_sae(
    sae: SAE | str | Path, *, device: str, name: str | None = None
) -> tuple[SAE, str, str]:
    """The SAE with its ``(release, sae_id)`` as SAE-Bench names result files."""
    from sae_lens import SAE

    if isinstance(sae, SAE):
        return sae, name or "custom", "custom_sae"
    folder = Path(sae).expanduser()
    if folder.is_dir():
        return (
            SAE.load_from_disk(folder, device=device),
            name or folder.resolve().name,
            "custom_sae",
        )
    release, _, sae_id = str(sae).partition("/")
    if not sae_id:
        raise ValueError(f"{sae!r} is neither a folder nor a hub id 'release/sae_id'")
    loaded: SAE[Any] = SAE.from_pretrained(release, sae_id, device=device)
    with contextlib.suppress(NotImplementedError):  # as general_utils.load_and_format_sae
        loaded.fold_W_dec_norm()
    return loaded, release, sae_id


def load_hooked_transformer(
    model_name: str,
    hook_name: str,
    *,
    device: str,
    dtype: str,
    from_pretrained_kwargs: Mapping[str, Any] | None = None,
) -> tuple[HookedTransformer, str]:
    """The model as a ``HookedTransformer`` (unprocessed weights) and the SAE's hook in it.

    A TransformerLens hook name (``blocks.L...``) on a hub model loads exactly as
    SAE-Bench loads it (``from_pretrained_no_processing``). A local folder, or a hook
    named after a Hugging Face module, goes through the Hugging Face model
    (:func:`sae_lens_ext.hooked.load_hooked_sae_transformer`): the module must be one of
    the model's decoder layers, read as ``blocks.L.hook_resid_post``
    (:func:`sae_lens_ext.hooked.transformer_lens_hook_name`), and both must give the same
    activations.
    """
    from transformer_lens import HookedTransformer

    from sae_lens_ext.hooked import (
        is_local_checkpoint,
        load_hooked_sae_transformer,
        load_hugging_face,
        transformer_lens_hook_name,
    )

    torch_dtype = _torch_dtype(dtype)
    if not is_local_checkpoint(model_name) and hook_name.startswith("blocks."):
        with _model_errors(model_name):
            model = HookedTransformer.from_pretrained_no_processing(
                model_name, device=device, dtype=torch_dtype, **(from_pretrained_kwargs or {})
            )
        return model, _checked_hook(model, hook_name, model_name)
    with _model_errors(model_name):
        hf_model, tokenizer = load_hugging_face(model_name, torch_dtype)
        model = load_hooked_sae_transformer(
            model_name,
            device=device,
            dtype=torch_dtype,
            hf_model=hf_model,
            tokenizer=tokenizer,
            model_class=HookedTransformer,
        )
    if hook_name in model.hook_dict:
        return model, _checked_hook(model, hook_name, model_name)
    try:
        tl_hook = transformer_lens_hook_name(hook_name, hf_model)
    except ValueError as exc:
        raise ValueError(
            f"SAE hook of {model_name}: {exc}; SAE-Bench evaluates residual-stream SAEs"
        ) from None
    if tl_hook not in model.hook_dict:
        raise ValueError(f"hook {hook_name!r} is not a TransformerLens hook of {model_name}")
    check_same_activations(hf_model, hook_name, model, tl_hook)
    return model, tl_hook


def _checked_hook(model: Any, hook_name: str, model_name: str) -> str:
    if hook_name not in model.hook_dict:
        raise ValueError(f"hook {hook_name!r} is not a TransformerLens hook of {model_name}")
    return hook_name


def check_same_activations(hf_model: Any, hf_module: str, model: Any, tl_hook: str) -> float:
    """Relative max difference of the two models' activations on random tokens; raise if large."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(model.cfg.d_vocab, (2, 16), generator=generator)
    captured: list[torch.Tensor] = []
    module = hf_model.get_submodule(hf_module)
    handle = module.register_forward_hook(
        lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        try:
            hf_model(tokens.to(hf_model.device))
        finally:
            handle.remove()
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=tl_hook)
    want, got = captured[0].float().cpu(), cache[tl_hook].float().cpu()
    error = ((got - want).abs().max() / want.abs().max().clamp(min=1e-12)).item()
    exact = captured[0].dtype == cache[tl_hook].dtype == torch.float32
    tolerance = 1e-3 if exact else 3e-2
    if error > tolerance:
        raise ValueError(
            f"{hf_module} and TransformerLens {tl_hook} differ (relative error {error:.2e}): "
            "the SAE's activations cannot be read in SAE-Bench's model"
        )
    return error


# --- SAE-Bench's defaults, the SAE's cfg, the working directory ------------------------------


def _sae_bench_batch_size(model_name: str) -> int | None:
    """SAE-Bench's LLM batch size for its own models (activation_collection), else None."""
    from sae_bench.sae_bench_utils import activation_collection

    return activation_collection.LLM_NAME_TO_BATCH_SIZE.get(_short_name(model_name))


def _sae_bench_dtype(model_name: str) -> str:
    """SAE-Bench's LLM dtype for its own models, else core's default (float32)."""
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.sae_bench_utils import activation_collection

    table = activation_collection.LLM_NAME_TO_DTYPE
    return table.get(_short_name(model_name), CoreEvalConfig().llm_dtype)


def _short_name(model_name: str) -> str:
    return model_name.rstrip("/").split("/")[-1]


def _torch_dtype(dtype: str) -> Any:
    from sae_bench.sae_bench_utils.general_utils import str_to_dtype

    return str_to_dtype(dtype)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_path(name: str | None) -> str | None:
    """An existing local path made absolute (the evals may run in ``data_dir``)."""
    if name and Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name


@contextlib.contextmanager
def _bench_cfg(sae: Any, **metadata: Any) -> Iterator[None]:
    """Give SAE-Bench a copy of the SAE's cfg with ``metadata`` set; restore the original."""
    original = sae.cfg
    sae.cfg = copy.deepcopy(original)
    for key, value in metadata.items():
        setattr(sae.cfg.metadata, key, value)
    try:
        yield
    finally:
        original.device, original.dtype = sae.cfg.device, sae.cfg.dtype
        sae.cfg = original


@contextlib.contextmanager
def _grad_mode_restored() -> Iterator[None]:
    import torch

    enabled = torch.is_grad_enabled()
    try:
        yield
    finally:
        torch.set_grad_enabled(enabled)


@contextlib.contextmanager
def _tokenizer_restored(tokenizer: Any) -> Iterator[None]:
    """Restore the tokenizer's padding and truncation sides after one evaluation.

    SAE-Bench's evals each load their own model; here they share one, and sae-probes
    sets ``truncation_side="left"``, which would make the next eval keep the end of
    long texts instead of their beginning.
    """
    sides = {k: getattr(tokenizer, k) for k in ("padding_side", "truncation_side")}
    try:
        yield
    finally:
        for key, value in sides.items():
            setattr(tokenizer, key, value)


@contextlib.contextmanager
def _jaxtyping_shape_checks_off() -> Iterator[None]:
    """Switch jaxtyping's runtime shape checks off (its own ``jaxtyping_disable`` setting).

    SAE-Bench 0.6.0's sparse probing fails on every run otherwise: inside
    ``train_probe_on_activations`` (``@jaxtyped``, which binds ``train_dataset_size``
    to the rows of one class) it calls ``train_sklearn_probe`` (bare ``@beartype``),
    whose inputs hold positives and negatives (twice as many rows), and jaxtyping
    checks them against the enclosing call's sizes (BeartypeCallHintParamViolation).
    These are type annotations, not evaluation logic; nothing else changes.
    """
    import jaxtyping

    previous = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", previous)


@contextlib.contextmanager
def _working_directory(path: str | Path | None) -> Iterator[None]:
    """Run in ``path`` (if given), where ``load_dataset("org/name")`` finds ``org/name/``."""
    if path is None:
        yield
        return
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"data_dir {path} is not a folder")
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _model_errors(model_name: str) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise BenchDataError(model=model_name, reason=_first_line(error)) from error


@contextlib.contextmanager
def _dataset_errors(
    bench: str, hub_ids: Sequence[str], dataset_names: Sequence[str] = ()
) -> Iterator[None]:
    """Turn a failed dataset load into one line naming what to provide."""
    try:
        yield
    except OSError as error:  # ConnectionError offline, FileNotFoundError / DatasetNotFoundError
        raise BenchDataError(
            bench=bench, hub_ids=hub_ids, dataset_names=dataset_names, reason=_first_line(error)
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def hub_datasets(dataset_names: Sequence[str]) -> list[str]:
    """The hub datasets behind SAE-Bench's dataset names (dataset_utils' dispatch)."""
    ids = {n.split("_class_set")[0].removesuffix("_sentiment") for n in dataset_names}
    return sorted(ids)


def _seed(seed: int) -> None:
    """Seed Python, NumPy and torch (SAE-Bench's absorption prompts use ``random``)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- the evaluations ---------------------------------------------------------------------------


def _run_core(run: BenchRun) -> Path:
    """core.main.multiple_evals' per-SAE body, on ``run.model``."""
    from sae_bench.evals.core import main as core
    from sae_bench.sae_bench_utils import get_sae_bench_version, get_sae_lens_version
    from sae_lens.training.activations_store import ActivationsStore

    s = run.settings
    cfg = run.config(
        "core",
        model_name=run.model_name,
        llm_dtype=run.llm_dtype,
        batch_size_prompts=s.batch_size_prompts,
        dataset=s.dataset,
        context_size=s.context_size,
        **CORE_METRICS,
    )
    with _dataset_errors("core", [cfg.dataset]):
        store = ActivationsStore.from_sae(
            run.model,
            run.sae,
            context_size=cfg.context_size,
            dataset=cfg.dataset,
            dataset_trust_remote_code=True,
        )
        store.shuffle_input_dataset(seed=CORE_SHUFFLE_SEED)
        tokenizer = run.model.tokenizer
        assert tokenizer is not None  # load_model gave the model its tokenizer
        ignore = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}
        scalars, features = core.run_evals(
            sae=run.sae,
            activation_store=store,
            model=run.model,
            eval_config=cfg,
            ignore_tokens=ignore,
            # SAE-Bench's batch bars (core runs minutes on a real model); the recorded
            # config stays SAE-Bench's own (its `verbose` changes no result)
            verbose=True,
        )
    result = core.nested_dict()
    result.update(unique_id=run.sae_name, sae_set=run.release, sae_id=run.sae_id, eval_cfg=cfg)
    result["metrics"] = scalars
    if cfg.compute_featurewise_density_statistics or cfg.compute_featurewise_weight_based_metrics:
        result["metrics"]["misc_metrics"] = core.calculate_misc_metrics(features)
        result["feature_metrics"] = features
    path = run.result_path("core")
    core.save_single_eval_result(
        core.replace_nans_with_negative_one(result),
        run.eval_id,
        get_sae_lens_version(),
        get_sae_bench_version(),
        str(path),
        run.sae,
    )
    return path


def _run_absorption(run: BenchRun) -> Path:
    """absorption.main.run_eval's per-SAE body, on ``run.model``, caches in scratch."""
    import torch
    from sae_bench.evals.absorption import main as absorption
    from sae_bench.evals.absorption.feature_absorption import run_feature_absortion_experiment
    from sae_bench.evals.absorption.k_sparse_probing import run_k_sparse_probing_experiment

    cfg = run.config(
        "absorption",
        model_name=run.model_name,
        llm_dtype=run.llm_dtype,
        llm_batch_size=run.settings.llm_batch_size or _sae_bench_batch_size(run.model_name),
        random_seed=run.settings.random_seed,
    )
    _seed(cfg.random_seed)
    dirs = {
        k: run.scratch / "absorption" / k
        for k in ("k_sparse_probing", "feature_absorption", "probes")
    }
    common = dict(
        model=run.model,
        sae=run.sae,
        layer=run.sae.cfg.hook_layer,
        sae_name=run.sae_name,
        force=True,
        max_k_value=cfg.max_k_value,
        prompt_template=cfg.prompt_template,
        prompt_token_pos=cfg.prompt_token_pos,
        device=run.device,
        probes_dir=dirs["probes"],
    )
    with torch.enable_grad():  # run_eval: torch.set_grad_enabled(True)
        try:
            probing = run_k_sparse_probing_experiment(
                **common,
                experiment_dir=dirs["k_sparse_probing"],
                f1_jump_threshold=cfg.f1_jump_threshold,
                k_sparse_probe_l1_decay=cfg.k_sparse_probe_l1_decay,
                k_sparse_probe_batch_size=cfg.k_sparse_probe_batch_size,
                k_sparse_probe_num_epochs=cfg.k_sparse_probe_num_epochs,
                eval_batch_size=cfg.eval_k_sparse_probe_batch_size,
                precalc_k_sparse_probe_sae_acts=cfg.precalc_k_sparse_probe_sae_acts,
            )
        except KeyError as error:  # a letter with no word in the vocabulary's training split
            raise _missing_letter(run, error) from error
        found = int((probing["f1_probe"] > cfg.min_GT_probe_f1).sum())
        if found < cfg.min_feats_for_eval:  # run_eval stops here without writing a result
            raise ModelTooSmallError(
                f"absorption: only {found} first-letter probes of {run.model_name} reach "
                f"F1 > {cfg.min_GT_probe_f1}; SAE-Bench needs min_feats_for_eval="
                f"{cfg.min_feats_for_eval} (it recommends models of 2B parameters or more)"
            )
        raw = run_feature_absortion_experiment(
            **common,
            experiment_dir=dirs["feature_absorption"],
            sparse_probing_experiment_dir=dirs["k_sparse_probing"],
            feature_split_f1_jump_threshold=cfg.f1_jump_threshold,
            batch_size=cfg.llm_batch_size,
        )
    output = _absorption_output(run, cfg, probing, absorption._aggregate_results_df(raw))
    path = run.result_path("absorption")
    output.to_json_file(str(path), indent=2)
    return path


def _missing_letter(run: BenchRun, error: KeyError) -> Exception:
    """SAE-Bench's k-sparse probing trains one probe per first letter present in the
    training split of the vocabulary and then reads every letter's probe: a letter with no
    word in that split is a bare ``KeyError: <letter index>``. The split is random per run
    (``random.sample`` over the tokenizer's vocabulary, whose order a fast tokenizer changes
    on every call), so on a small vocabulary this happens in some runs and not others."""
    from sae_bench.evals.absorption.vocab import LETTERS

    index = error.args[0] if error.args else None
    if not isinstance(index, int) or not 0 <= index < len(LETTERS):
        return error
    return ModelTooSmallError(
        f"absorption: SAE-Bench's training split of {run.model_name}'s vocabulary has no word "
        f"starting with {LETTERS[index]!r}, so it has no probe for that letter (the split is "
        "drawn anew in each run from the tokenizer's vocabulary order); the vocabulary has too "
        "few words per first letter (SAE-Bench recommends models of 2B parameters or more)"
    )


def _absorption_output(run: BenchRun, cfg: Any, probing: Any, agg: Any) -> Any:
    """AbsorptionEvalOutput exactly as absorption.main.run_eval builds it."""
    import statistics

    from sae_bench.evals.absorption import eval_output as out
    from sae_bench.sae_bench_utils import get_sae_bench_version, get_sae_lens_version

    fractions, full_rates, splits, details = [], [], [], []
    for _, row in agg.iterrows():
        letter_f1 = probing[probing["letter"] == row["letter"]]["f1_probe"].item()
        if letter_f1 > cfg.min_GT_probe_f1:
            fractions.append(row["mean_absorption_fraction"])
            full_rates.append(row["full_absorption_rate"])
            splits.append(row["num_split_feats"])
            details.append(
                out.AbsorptionResultDetail(
                    first_letter=row["letter"],
                    mean_absorption_fraction=row["mean_absorption_fraction"],
                    full_absorption_rate=row["full_absorption_rate"],
                    num_full_absorption=row["num_full_absorption"],
                    num_probe_true_positives=row["num_probe_true_positives"],
                    num_split_features=row["num_split_feats"],
                )
            )
    mean = out.AbsorptionMeanMetrics(
        mean_absorption_fraction_score=statistics.mean(fractions),
        mean_full_absorption_score=statistics.mean(full_rates),
        mean_num_split_features=statistics.mean(splits),
        std_dev_absorption_fraction_score=statistics.stdev(fractions),
        std_dev_full_absorption_score=statistics.stdev(full_rates),
        std_dev_num_split_features=statistics.stdev(splits),
    )
    return out.AbsorptionEvalOutput(
        eval_type_id=out.EVAL_TYPE_ID_ABSORPTION,
        eval_config=cfg,
        eval_id=run.eval_id,
        datetime_epoch_millis=int(datetime.now().timestamp() * 1000),
        eval_result_metrics=out.AbsorptionMetricCategories(mean=mean),
        eval_result_details=details,
        sae_bench_commit_hash=get_sae_bench_version(),
        sae_lens_id=run.sae_id,
        sae_lens_release_id=run.release,
        sae_lens_version=get_sae_lens_version(),
        sae_cfg_dict=run.sae.cfg.to_dict(),
    )


def _probing_values(run: BenchRun) -> dict[str, Any]:
    """Our settings for the fields sparse probing, SCR and TPP share."""
    from sae_bench.evals.core.eval_config import CoreEvalConfig

    s = run.settings
    return {
        "model_name": run.model_name,
        "llm_dtype": run.llm_dtype,
        "llm_batch_size": s.llm_batch_size
        or _sae_bench_batch_size(run.model_name)
        or CoreEvalConfig().batch_size_prompts,  # these configs have no default
        "sae_batch_size": s.sae_batch_size,
        "context_length": s.context_size,
        "random_seed": s.random_seed,
    }


def _run_sparse_probing(run: BenchRun) -> Path:
    """sparse_probing.main.run_eval's per-SAE body, without cached activations."""
    from sae_bench.evals.sparse_probing import eval_output as out
    from sae_bench.evals.sparse_probing import main as sparse_probing
    from sae_bench.sae_bench_utils import get_sae_bench_version, get_sae_lens_version

    cfg = run.config("sparse_probing", **_probing_values(run))
    artifacts = run.scratch / out.EVAL_TYPE_ID_SPARSE_PROBING
    with (
        _dataset_errors("sparse_probing", hub_datasets(cfg.dataset_names), cfg.dataset_names),
        _jaxtyping_shape_checks_off(),
    ):
        results, per_class = sparse_probing.run_eval_single_sae(
            cfg, run.sae, run.model, run.device, str(artifacts), save_activations=False
        )

    def scalars(prefix: str) -> dict[str, Any]:
        return {
            k: v for k, v in results.items() if k.startswith(prefix) and not isinstance(v, dict)
        }

    output = out.SparseProbingEvalOutput(
        eval_config=cfg,
        eval_id=run.eval_id,
        datetime_epoch_millis=int(datetime.now().timestamp() * 1000),
        eval_result_metrics=out.SparseProbingMetricCategories(
            llm=out.SparseProbingLlmMetrics(**scalars("llm_")),
            sae=out.SparseProbingSaeMetrics(**scalars("sae_")),
        ),
        eval_result_details=[
            out.SparseProbingResultDetail(dataset_name=name, **result)
            for name, result in results.items()
            if isinstance(result, dict)
        ],
        eval_result_unstructured=per_class,
        sae_bench_commit_hash=get_sae_bench_version(),
        sae_lens_id=run.sae_id,
        sae_lens_release_id=run.release,
        sae_lens_version=get_sae_lens_version(),
        sae_cfg_dict=run.sae.cfg.to_dict(),
    )
    path = run.result_path("sparse_probing")
    output.to_json_file(str(path), indent=2)
    return path


def _run_scr_or_tpp(run: BenchRun, perform_scr: bool) -> Path:
    """scr_and_tpp.main.run_eval's per-SAE body, without cached activations."""
    from sae_bench.evals.scr_and_tpp import main as scr_and_tpp

    bench = "scr" if perform_scr else "tpp"
    cfg = run.config(bench, perform_scr=perform_scr, **_probing_values(run))
    if cfg.perform_scr != perform_scr:
        raise ValueError(f"overrides[{bench!r}] must not set perform_scr")
    with _dataset_errors(bench, hub_datasets(cfg.dataset_names), cfg.dataset_names):
        results, per_class = scr_and_tpp.run_eval_single_sae(
            cfg, run.sae, run.model, run.device, str(run.scratch / bench), save_activations=False
        )
    path = run.result_path(bench)
    _scr_tpp_output(run, cfg, results, per_class).to_json_file(str(path), indent=2)
    return path


def _scr_tpp_output(run: BenchRun, cfg: Any, results: dict, per_class: dict) -> Any:
    """ScrEvalOutput / TppEvalOutput exactly as scr_and_tpp.main.run_eval builds them."""
    from sae_bench.evals.scr_and_tpp import eval_output as out
    from sae_bench.sae_bench_utils import get_sae_bench_version, get_sae_lens_version

    scalars = {k: v for k, v in results.items() if not isinstance(v, dict)}
    details = {k: v for k, v in results.items() if isinstance(v, dict)}
    common = dict(
        eval_config=cfg,
        eval_id=run.eval_id,
        datetime_epoch_millis=int(datetime.now().timestamp() * 1000),
        sae_bench_commit_hash=get_sae_bench_version(),
        sae_lens_id=run.sae_id,
        sae_lens_release_id=run.release,
        sae_lens_version=get_sae_lens_version(),
        sae_cfg_dict=run.sae.cfg.to_dict(),
    )
    if cfg.perform_scr:
        return out.ScrEvalOutput(
            eval_type_id=out.EVAL_TYPE_ID_SCR,
            eval_result_metrics=out.ScrMetricCategories(scr_metrics=out.ScrMetrics(**scalars)),
            eval_result_details=[
                out.ScrResultDetail(dataset_name=k, **v) for k, v in details.items()
            ],
            **common,
        )
    return out.TppEvalOutput(
        eval_type_id=out.EVAL_TYPE_ID_TPP,
        eval_result_metrics=out.TppMetricCategories(tpp_metrics=out.TppMetrics(**scalars)),
        eval_result_details=[out.TppResultDetail(dataset_name=k, **v) for k, v in details.items()],
        eval_result_unstructured=per_class,
        **common,
    )


def _run_sae_probes(run: BenchRun) -> Path:
    """SAE-Bench's sparse_probing_sae_probes.run_eval, unchanged.

    It loads no model itself: sae-probes reads the model's activations from its
    cache, which its own ``ensure_dataset_activations`` fills from ``run.model``.
    """
    from sae_bench.evals.sparse_probing_sae_probes import main as sae_probes_eval
    from sae_probes.generate_model_activations import ensure_dataset_activations

    cfg = run.config(
        "sparse_probing_sae_probes",
        model_name=run.model.cfg.model_name,  # a path part in sae-probes' folders
        random_seed=run.settings.random_seed,
        results_path=str(run.scratch / "sae_probes_results"),
        model_cache_path=str(run.scratch / "sae_probes_model_acts"),
    )
    ensure_dataset_activations(
        model_name=cfg.model_name,
        dataset_short_names=list(cfg.dataset_names),
        hook_names=[run.sae.cfg.hook_name],
        model_cache_path=cfg.model_cache_path,
        device=run.device,
        model=run.model,
    )
    staging = run.scratch / "sae_probes_output"
    sae_probes_eval.run_eval(cfg, [(run.release, run.sae)], run.device, str(staging), True)
    return _retagged(run, "sparse_probing_sae_probes", staging, "custom_sae")


def _retagged(run: BenchRun, bench: str, staging: Path, staged_id: str) -> Path:
    """Move a result SAE-Bench wrote for an SAE object to this SAE's own name and id."""
    from sae_bench.sae_bench_utils import general_utils

    staged = Path(general_utils.get_results_filepath(str(staging), run.release, staged_id))
    data = json.loads(staged.read_text())
    data["sae_lens_id"] = run.sae_id
    path = run.result_path(bench)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


RUNNERS: dict[str, Callable[[BenchRun], Path]] = {
    "core": _run_core,
    "absorption": _run_absorption,
    "sparse_probing": _run_sparse_probing,
    "sparse_probing_sae_probes": _run_sae_probes,
    "scr": lambda run: _run_scr_or_tpp(run, perform_scr=True),
    "tpp": lambda run: _run_scr_or_tpp(run, perform_scr=False),
}


# --- beside SAE-Bench's results ------------------------------------------------------------


def write_extra_results(run: BenchRun, metrics: Mapping[str, Any]) -> Path:
    """Write metrics that are not SAE-Bench's beside its results (``sae_lens_ext/``)."""
    path = run.result_path("sae_lens_ext")
    record = {
        "sae_lens_release_id": run.release,
        "sae_lens_id": run.sae_id,
        "model_name": run.model_name,
        "hook_name": run.sae.cfg.hook_name,
        "sae_hook_name": run.sae_hook_name,
        "architecture": run.sae.cfg.architecture(),
        "eval_id": run.eval_id,
        "metrics": dict(metrics),
    }
    path.write_text(json.dumps(record, indent=2, default=str))
    return path
