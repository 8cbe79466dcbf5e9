"""The SAE and its model as SAE-Bench reads them: a ``HookedTransformer`` and a hook in it.

A local folder written by ``save_pretrained`` (as ``sae-lens train --model_class_name
AutoModelForCausalLM --model_name ./dir`` takes) is converted with TransformerLens' own
loaders. An SAE trained on a Hugging Face module (e.g. ``transformer.h.3``, the output of a
decoder layer) is evaluated at the same activations under their TransformerLens name
(``blocks.3.hook_resid_post``), after checking on a few tokens that both give the same
numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_ext.bench.errors import model_errors

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


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

    torch_dtype = to_torch_dtype(dtype)
    if not is_local_checkpoint(model_name) and hook_name.startswith("blocks."):
        with model_errors(model_name):
            model = HookedTransformer.from_pretrained_no_processing(
                model_name, device=device, dtype=torch_dtype, **(from_pretrained_kwargs or {})
            )
        return model, _checked_hook(model, hook_name, model_name)
    with model_errors(model_name):
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


def to_torch_dtype(dtype: str) -> Any:
    """SAE-Bench's dtype name as a torch dtype (``general_utils.str_to_dtype``)."""
    from sae_bench.sae_bench_utils.general_utils import str_to_dtype

    return str_to_dtype(dtype)


def default_device() -> str:
    """``cuda`` when available, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_path(name: str | None) -> str | None:
    """An existing local path made absolute; a hub name (or ``None``) as it is."""
    if name and Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name
