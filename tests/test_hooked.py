"""``sae_lens_ext.hooked``: a local checkpoint as a HookedSAETransformer whose hooks carry the
Hugging Face modules' outputs, and an SAE trained on such a module spliced into it."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TinyLM


@pytest.fixture(scope="module")
def models(tiny_lm: TinyLM):
    from transformers import AutoModelForCausalLM

    from sae_lens_ext.hooked import load_hooked_sae_transformer

    hf_model = AutoModelForCausalLM.from_pretrained(tiny_lm.model_dir).eval()
    return hf_model, load_hooked_sae_transformer(tiny_lm.model_dir)


def tokens(model) -> torch.Tensor:
    return model.to_tokens(["the cat sat on a mat while dogs ran", "sparse features of models"])


def hf_module_output(hf_model, module: str, toks: torch.Tensor) -> torch.Tensor:
    captured = []
    handle = hf_model.get_submodule(module).register_forward_hook(
        lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            logits = hf_model(toks).logits
    finally:
        handle.remove()
    return captured[0], logits


@pytest.mark.parametrize("layer", [0, 1])
def test_the_mapped_hook_carries_the_hugging_face_modules_output(models, tiny_lm, layer) -> None:
    from sae_lens import HookedSAETransformer

    from sae_lens_ext.hooked import transformer_lens_hook_name

    hf_model, model = models
    assert isinstance(model, HookedSAETransformer)
    hook = transformer_lens_hook_name(f"transformer.h.{layer}", tiny_lm.model_dir)  # config only
    assert hook == transformer_lens_hook_name(f"transformer.h.{layer}", hf_model)
    assert hook == f"blocks.{layer}.hook_resid_post"
    toks = tokens(model)
    want, hf_logits = hf_module_output(hf_model, f"transformer.h.{layer}", toks)
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks, names_filter=hook)
    torch.testing.assert_close(cache[hook], want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, hf_logits, rtol=1e-4, atol=1e-4)  # unprocessed weights


def test_names_without_a_counterpart_are_refused(models) -> None:
    from sae_lens_ext.hooked import transformer_lens_hook_name

    hf_model, _ = models
    assert transformer_lens_hook_name("blocks.1.hook_resid_pre", hf_model) == (
        "blocks.1.hook_resid_pre"
    )
    for name in ("transformer.h.1.mlp", "transformer.h.2", "transformer.wte", "lm_head"):
        with pytest.raises(ValueError, match="decoder layers"):
            transformer_lens_hook_name(name, hf_model)


def exact_sae(d_in: int, hook_name: str, model_name: str):
    """A StandardSAE that reconstructs every input exactly: relu(x) - relu(-x) = x."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = hook_name, model_name
    return sae


def test_a_trained_sae_splices_in_at_its_module(models, tiny_lm) -> None:
    from sae_lens_ext.hooked import splice_sae

    hf_model, model = models
    toks = tokens(model)
    sae = exact_sae(tiny_lm.d_in, "transformer.h.0", str(tiny_lm.model_dir))
    assert splice_sae(model, sae) == "blocks.0.hook_resid_post"  # model from the metadata
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    try:
        want, hf_logits = hf_module_output(hf_model, "transformer.h.0", toks)
        with torch.no_grad():
            logits, cache = model.run_with_cache(toks)
        sae_in = cache["blocks.0.hook_resid_post.hook_sae_input"]
        torch.testing.assert_close(sae_in, want, rtol=1e-4, atol=1e-5)  # what it trained on
        assert (cache["blocks.0.hook_resid_post.hook_sae_acts_post"] > 0).any()
        torch.testing.assert_close(logits, hf_logits, rtol=1e-4, atol=1e-4)  # exact SAE
        with torch.no_grad():
            sae.W_dec.mul_(0.5)  # now the SAE's reconstruction is what the model reads
            halved = model(toks)
        assert not torch.allclose(halved, hf_logits, atol=1e-3)
    finally:
        model.reset_saes()
    with torch.no_grad():
        torch.testing.assert_close(model(toks), hf_logits, rtol=1e-4, atol=1e-4)


def test_splice_needs_a_hook_and_a_model(models, tiny_lm) -> None:
    from sae_lens_ext.hooked import splice_sae

    _, model = models
    sae = exact_sae(tiny_lm.d_in, "transformer.h.0", None)
    with pytest.raises(ValueError, match="no model_name: pass model_name"):
        splice_sae(model, sae)
    sae.cfg.metadata.hook_name = None
    with pytest.raises(ValueError, match="no hook_name"):
        splice_sae(model, sae, tiny_lm.model_dir)
