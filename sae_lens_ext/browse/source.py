"""What ``sae-lens browse`` reads: the SAE (a run folder or a Hub id), its model, and
whole contexts of tokens with the model's activations at the SAE's hook.

Settings come from, in order: the command's options, the run's ``runner_cfg.json``
(``sae-lens train`` and upstream runners write it), the SAE's ``cfg.json`` metadata. The
model is loaded as a TransformerLens ``HookedTransformer`` (a local ``save_pretrained``
folder is converted, a Hugging Face decoder-layer hook read at ``blocks.L.hook_resid_post``;
:func:`sae_lens_ext.bench.load_hooked_transformer`), so that the unembedding is at hand;
a hook that has no TransformerLens equivalent is read through upstream's ``load_model``
(no promoted tokens then). Tokens come from upstream's ``ActivationsStore`` (its
tokenization, BOS and sequence separators), one batch of whole contexts at a time.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae_lens_ext.errors import fail, one_line

#: Hook points whose vectors live in the residual stream, or are written into it as they
#: are: their decoder directions have a direct effect on the logits.
RESIDUAL_HOOK = re.compile(
    r"^(blocks\.\d+\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)|hook_embed)$"
)
#: Input activations kept for plugins (``BrowserData.sample``): at most this many tokens...
SAMPLE_TOKENS = 16_384
#: ...and this many bytes.
SAMPLE_BYTES = 64 << 20


@dataclass
class Source:
    """An SAE, its model, and the stream of contexts it is browsed on."""

    sae: Any
    name: str
    folder: Path | None
    model: Any
    hook_name: str  # in ``model``
    store: Any
    settings: dict[str, Any]
    no_unembedding: str | None = None  # why promoted tokens are not shown
    special_ids: list[int] = field(default_factory=list)

    @property
    def context_size(self) -> int:
        return int(self.store.training_context_size)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer


def load_target(target: str, device: str) -> tuple[Any, str, Path | None]:
    """The SAE of a run folder or a Hub ``release/sae_id``: ``(sae, name, folder)``."""
    folder = Path(target).expanduser()
    if folder.is_dir():
        from sae_lens_ext.run.output import load_saved_sae

        if (folder / "demo_data").is_dir() or (folder / "synthetic_model").is_dir():
            raise fail(
                f"RUN {target} is an SAE trained on synthetic data (`sae-lens demo`): there "
                "are no tokens to show; browse an SAE of a language model"
            )
        inside = sorted(p.name for p in folder.iterdir() if (p / "cfg.json").is_file())
        if not (folder / "cfg.json").is_file() and inside:
            raise fail(
                f"RUN {target} holds {len(inside)} SAEs ({', '.join(inside[:5])}"
                f"{', ...' if len(inside) > 5 else ''}); browse one of them, e.g. "
                f"{folder / inside[0]}"
            )
        return load_saved_sae(folder).to(device), folder.resolve().name, folder
    release, _, sae_id = target.partition("/")
    if not release or not sae_id or target.startswith((".", "/", "~")):
        raise fail(
            f"RUN {target}: no such folder; give a run folder (`sae-lens train` output) or a "
            "Hub SAE as RELEASE/SAE_ID (e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre)"
        )
    from sae_lens import SAE

    from sae_lens_ext.run.lm_config import is_network_error

    try:
        sae: Any = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as exc:
        if is_network_error(exc):
            raise fail(
                f"RUN {target} is not a folder, and the Hugging Face Hub cannot be reached to "
                "download it (offline); connect, or browse a local run folder"
            ) from exc
        if isinstance(exc, ValueError):
            raise fail(f"RUN {target}: not a folder, nor a Hub SAE ({one_line(exc)})") from exc
        raise
    return sae, f"{release}/{sae_id}", None


def run_settings(sae: Any, folder: Path | None, given: dict[str, Any]) -> dict[str, Any]:
    """Model and data settings: ``given`` (the options set), else the run's
    ``runner_cfg.json``, else the SAE's metadata."""
    from sae_lens_ext.run.results import read_runner_cfg

    runner = (read_runner_cfg(folder) if folder is not None else None) or {}
    meta = sae.cfg.metadata
    keys = (
        "model_name", "model_class_name", "hook_name", "hook_head_index", "dataset_path",
        "context_size", "prepend_bos", "seqpos_slice", "model_from_pretrained_kwargs",
        "streaming", "disable_concat_sequences", "sequence_separator_token",
        "dataset_trust_remote_code", "model_kwargs",
    )  # fmt: skip
    settings = {k: runner.get(k, getattr(meta, k, None)) for k in keys}
    settings.update({k: v for k, v in given.items() if v is not None})
    for key, flag in (("model_name", "--model-name"), ("dataset_path", "--dataset")):
        if not settings.get(key):
            raise fail(
                f"the SAE's cfg.json names no {key} (and there is no runner_cfg.json beside it); "
                f"give {flag}"
            )
    if not settings.get("hook_name"):
        raise fail("the SAE's cfg.json names no hook_name: it cannot be read from a model")
    if not settings.get("context_size"):
        raise fail("the SAE's cfg.json names no context_size; give --context-size")
    from sae_lens_ext.run.lm_config import looks_local

    for key, flag in (("model_name", "--model-name"), ("dataset_path", "--dataset")):
        value = str(settings[key])
        if key not in given or given[key] is None:
            value = settings[key] = _recorded_path(value, folder)
        if looks_local(value) and not Path(value).expanduser().exists():
            raise fail(f"{flag} {value}: no such file or folder")
    if given.get("dataset_path") is not None or settings.get("streaming") is None:
        settings["streaming"] = True  # reads only what it needs, local files or the Hub
    return settings


def _recorded_path(value: str, folder: Path | None) -> str:
    """A relative model or data path the run recorded, found from here or, when the command
    runs elsewhere, from the folder the run was started in (an ancestor of the run folder)."""
    path = Path(value).expanduser()
    if folder is None or path.is_absolute() or path.exists():
        return value
    for base in folder.resolve().parents:
        if (base / path).exists():
            return str(base / path)
    return value


def load_model(settings: dict[str, Any], device: str, dtype: str) -> tuple[Any, str, str | None]:
    """``(model, hook name in it, why there is no unembedding or None)``."""
    from sae_lens_ext.bench import BenchDataError, load_hooked_transformer

    name, hook = str(settings["model_name"]), str(settings["hook_name"])
    if Path(name).expanduser().exists():
        name = str(Path(name).expanduser().resolve())
    print(f"Loading {settings['model_name']} ({hook})", file=sys.stderr)
    try:
        model, tl_hook = load_hooked_transformer(
            name,
            hook,
            device=device,
            dtype=dtype,
            from_pretrained_kwargs=settings.get("model_from_pretrained_kwargs"),
        )
    except BenchDataError as exc:
        raise fail(
            f"model {settings['model_name']} could not be loaded ({one_line(exc.__cause__)}); "
            "connect to the Hugging Face Hub, or give --model-name DIR (a save_pretrained folder)"
        ) from exc
    except ValueError as exc:  # a module with no TransformerLens equivalent
        why = (
            f"hook {hook} is not the output of one of the model's decoder layers, the only "
            "Hugging Face modules read at a TransformerLens hook (blocks.L.hook_resid_post)"
            if "decoder layers" in str(exc)
            else f"TransformerLens' copy of the model differs from it at {hook}"
        )
        return _upstream_model(settings, name, device), hook, f"{why}; no unembedding at hand"
    reason = None
    if settings.get("hook_head_index") is not None or not RESIDUAL_HOOK.match(tl_hook):
        reason = (
            f"hook {tl_hook} is not in the residual stream (nor written into it as it is), so "
            "a decoder direction has no direct path to the unembedding"
        )
    return model, tl_hook, reason


def _upstream_model(settings: dict[str, Any], name: str, device: str) -> Any:
    from sae_lens.load_model import load_model as upstream_load_model

    return upstream_load_model(
        str(settings.get("model_class_name") or "AutoModelForCausalLM"),
        name,
        device=device,
        model_from_pretrained_kwargs=settings.get("model_from_pretrained_kwargs"),
        hook_names=[str(settings["hook_name"])],
    )


def activations_store(
    model: Any, sae: Any, hook: str, settings: dict[str, Any], device: str
) -> Any:
    """Upstream's ``ActivationsStore`` on the run's dataset, at ``hook`` of ``model``."""
    from sae_lens.training.activations_store import ActivationsStore

    from sae_lens_ext.run.lm_config import hub_error

    seqpos = settings.get("seqpos_slice") or (None,)
    prepend_bos = settings.get("prepend_bos")
    try:
        return ActivationsStore(
            model=model,
            dataset=str(settings["dataset_path"]),
            streaming=bool(settings["streaming"]),
            hook_name=hook,
            hook_head_index=settings.get("hook_head_index"),
            context_size=int(settings["context_size"]),
            d_in=sae.cfg.d_in,
            n_batches_in_buffer=1,
            total_training_tokens=1,
            store_batch_size_prompts=1,
            train_batch_size_tokens=1,
            prepend_bos=True if prepend_bos is None else bool(prepend_bos),
            normalize_activations="none",
            device=torch.device(device),
            dtype="float32",
            model_kwargs=settings.get("model_kwargs") or {},
            dataset_trust_remote_code=settings.get("dataset_trust_remote_code"),
            seqpos_slice=tuple(seqpos),
            disable_concat_sequences=bool(settings.get("disable_concat_sequences")),
            sequence_separator_token=settings.get("sequence_separator_token", "bos"),
            activations_mixing_fraction=0.0,
        )
    except Exception as exc:
        raise hub_error(
            "dataset", str(settings["dataset_path"]), exc, "--dataset ./data-dir"
        ) from exc


def open_source(target: str, given: dict[str, Any], device: str, dtype: str) -> Source:
    """Load the SAE, its model and data (see the module docstring)."""
    sae, name, folder = load_target(target, device)
    settings = run_settings(sae, folder, given)
    model, hook, reason = load_model(settings, device, dtype)
    store = activations_store(model, sae, hook, settings, device)
    tokenizer = model.tokenizer
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return Source(
        sae=sae,
        name=name,
        folder=folder,
        model=model,
        hook_name=hook,
        store=store,
        settings=settings,
        no_unembedding=reason,
        special_ids=sorted(i for i in special if i is not None),
    )


def contexts(
    source: Source, max_tokens: int, batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(tokens (B, T), activations (B, T, d_in))`` of whole contexts, until ``max_tokens``
    tokens are read or the dataset ends (never a second pass over it)."""
    store, T = source.store, source.context_size
    wanted = -(-max_tokens // T)  # contexts
    read = 0
    with torch.no_grad():
        while read < wanted:
            try:
                tokens = store.get_batch_tokens(min(batch, wanted - read), raise_at_epoch_end=True)
            except StopIteration:
                return
            acts = store.get_activations(tokens)
            read += tokens.shape[0]
            yield tokens[:, slice(*store.seqpos_slice)], acts


def sample_size(context_size: int, d_in: int) -> int:
    """Contexts kept for plugins: ``SAMPLE_TOKENS`` tokens, at most ``SAMPLE_BYTES``."""
    by_bytes = SAMPLE_BYTES // max(1, context_size * d_in * 4)
    return max(1, min(-(-SAMPLE_TOKENS // context_size), by_bytes))
