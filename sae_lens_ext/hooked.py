"""A transformers checkpoint as a TransformerLens ``HookedSAETransformer``, and where a
Hugging Face module's output lives in it, so that a trained SAE splices into the model.

``sae-lens train --model_class_name AutoModelForCausalLM --model_name ./my-model
--hook_name transformer.h.0`` trains on the output of a Hugging Face module. To run the
model with the SAE spliced in (SAE-Lens's ``HookedSAETransformer``: ``run_with_saes``,
``run_with_cache_with_saes``, ``add_sae``), load the same checkpoint with
:func:`load_hooked_sae_transformer` and attach the SAE with :func:`splice_sae`, which reads
the module's output as TransformerLens's ``blocks.0.hook_resid_post``
(:func:`transformer_lens_hook_name`)::

    model = load_hooked_sae_transformer("./my-model")
    sae = SAE.load_from_disk("runs/my-sae")
    splice_sae(model, sae, "./my-model")
    logits = model("The cat sat on the mat")  # through the SAE's reconstruction

Heavy imports (torch, transformers, TransformerLens) happen inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE, HookedSAETransformer
    from transformer_lens import HookedTransformer

#: The prefixes of TransformerLens hook names (returned unchanged by the mapping).
TRANSFORMER_LENS_PREFIXES = ("blocks.", "hook_", "ln_final.", "embed.", "pos_embed.", "unembed.")


def is_local_checkpoint(model_name: str | Path) -> bool:
    """Whether ``model_name`` is a folder written by ``save_pretrained`` (has ``config.json``)."""
    return (Path(model_name) / "config.json").is_file()


def load_hugging_face(model_name: str | Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """The Hugging Face causal LM (in eval mode) and its tokenizer, from a folder or the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_name), dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(str(model_name))


def load_hooked_sae_transformer(
    model_name: str | Path,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    from_pretrained_kwargs: Mapping[str, Any] | None = None,
    hf_model: Any = None,
    tokenizer: Any = None,
    model_class: type[HookedTransformer] | None = None,
) -> HookedSAETransformer:
    """The model as a ``HookedSAETransformer`` with unprocessed weights (no folded layer
    norms, no centring), so its activations equal the Hugging Face model's.

    Args:
        model_name: a folder written by ``save_pretrained`` (as ``sae-lens train
            --model_class_name AutoModelForCausalLM --model_name`` takes) or a hub name that
            TransformerLens supports. TransformerLens's ``from_pretrained`` takes hub names
            only; a folder goes through the same loaders (``get_pretrained_model_config``,
            ``get_pretrained_state_dict``) with the folder's config and weights.
        device, dtype: where and in which dtype (``"float32"``, ``"bfloat16"``, or a
            ``torch.dtype``) the model lives.
        from_pretrained_kwargs: extra arguments of ``from_pretrained_no_processing`` (hub
            names only).
        hf_model, tokenizer: the Hugging Face model and tokenizer, if already loaded.
        model_class: the TransformerLens class to build (default ``HookedSAETransformer``;
            any ``HookedTransformer`` subclass).
    """
    from sae_lens import HookedSAETransformer

    cls = model_class or HookedSAETransformer
    torch_dtype = _torch_dtype(dtype)
    if hf_model is None or tokenizer is None:
        hf_model, tokenizer = load_hugging_face(model_name, torch_dtype)
    if not is_local_checkpoint(model_name):
        return cls.from_pretrained_no_processing(
            str(model_name),
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=device,
            dtype=torch_dtype,
            **(from_pretrained_kwargs or {}),
        )
    from transformer_lens import loading_from_pretrained as loading

    folder = str(model_name)
    with _config_folder(folder, hf_model.config) as config_folder:
        cfg = loading.get_pretrained_model_config(
            config_folder, hf_cfg=hf_model.config.to_dict(), device=device, dtype=torch_dtype
        )
        state_dict = loading.get_pretrained_state_dict(
            config_folder, cfg, hf_model, dtype=torch_dtype
        )
    cfg.tokenizer_name = folder
    model = cls(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    return model.eval()  # type: ignore[return-value]


def transformer_lens_hook_name(hook_name: str, model: str | Path | torch.nn.Module) -> str:
    """The TransformerLens hook that carries the output of Hugging Face module ``hook_name``.

    The output of the L-th decoder layer (``transformer.h.L`` in GPT-2, ``model.layers.L``
    in Llama or Gemma, ``gpt_neox.layers.L`` in Pythia: any module list with one entry per
    layer) is the residual stream after block L: ``blocks.L.hook_resid_post``. A
    TransformerLens hook name (``blocks.…``, ``hook_…``) is returned unchanged. Any other
    module has no TransformerLens counterpart: ``ValueError``.

    Args:
        hook_name: the module name (``cfg.metadata.hook_name`` of an SAE trained with
            ``--model_class_name AutoModelForCausalLM``).
        model: the Hugging Face model, or its folder or hub name (then only its config is
            read: the module tree is built on the ``meta`` device, without weights).
    """
    import torch

    if hook_name.startswith(TRANSFORMER_LENS_PREFIXES):
        return hook_name
    hf_model: Any = model if isinstance(model, torch.nn.Module) else _skeleton(model)
    n_layers: int = hf_model.config.num_hidden_layers
    parent, _, index = hook_name.rpartition(".")
    try:
        layers = hf_model.get_submodule(parent) if parent else None
    except AttributeError:
        layers = None
    decoder_layers = isinstance(layers, torch.nn.ModuleList) and len(layers) == n_layers
    if decoder_layers and index.isdigit() and int(index) < n_layers:
        return f"blocks.{int(index)}.hook_resid_post"
    raise ValueError(
        f"hook {hook_name!r} is neither a TransformerLens hook nor the output of one of the "
        f"model's {n_layers} decoder layers; only decoder-layer outputs map to TransformerLens "
        "(blocks.L.hook_resid_post)"
    )


def splice_sae(
    model: HookedSAETransformer,
    sae: SAE[Any],
    model_name: str | Path | torch.nn.Module | None = None,
    *,
    use_error_term: bool | None = None,
) -> str:
    """Attach ``sae`` to ``model`` (``model.add_sae``) at the TransformerLens hook of the
    module it was trained on; return that hook's name.

    ``sae.cfg.metadata.hook_name`` (what ``add_sae`` reads) becomes the TransformerLens name.
    ``model_name``: the model's folder, hub name or Hugging Face model, for the mapping
    (default: the SAE's ``cfg.metadata.model_name``). ``use_error_term``: as ``add_sae``'s
    (``True`` keeps the model's outputs exact while still running the SAE).
    """
    metadata = sae.cfg.metadata
    if not metadata.hook_name:
        raise ValueError("the SAE's cfg.metadata has no hook_name: set it to the hook it reads")
    source = model_name if model_name is not None else metadata.model_name
    if source is None:
        raise ValueError("the SAE's cfg.metadata has no model_name: pass model_name")
    hook = transformer_lens_hook_name(metadata.hook_name, source)
    if hook not in model.hook_dict:
        raise ValueError(f"the model has no hook {hook!r} (the SAE reads {metadata.hook_name!r})")
    metadata.hook_name = hook
    model.add_sae(sae, use_error_term=use_error_term)
    return hook


def _skeleton(model_name: str | Path) -> Any:
    """The Hugging Face model's module tree on the ``meta`` device (config only, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_name))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype {dtype!r}: not a torch dtype (e.g. float32, bfloat16)")
    return value


@contextlib.contextmanager
def _config_folder(folder: str, hf_config: Any) -> Iterator[str]:
    """The folder TransformerLens reads ``config.json`` from.

    TransformerLens' GPT-2 converter reads ``n_ctx``, which transformers>=5 no longer
    writes (it is ``n_positions``): such a config is read from a copy that has it.
    """
    if hasattr(hf_config, "n_ctx") or not hasattr(hf_config, "n_positions"):
        yield folder
        return
    config = json.loads((Path(folder) / "config.json").read_text())
    with tempfile.TemporaryDirectory(prefix="tl_config_") as tmp:
        copy_folder = Path(tmp) / Path(folder).name  # the model's name in TransformerLens
        copy_folder.mkdir()
        config["n_ctx"] = hf_config.n_positions
        (copy_folder / "config.json").write_text(json.dumps(config))
        yield str(copy_folder)
