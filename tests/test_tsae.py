"""The ``tsae`` architecture against the reference code of Bhalla et al. (ICLR 2026).

The reference formula below is written from AI4LIFE-GROUP/temporal-saes,
``dictionary_learning/trainers/temporal_sequence_top_k.py`` (``TemporalMatryoshkaBatchTopKSAE.
encode`` and ``TemporalMatryoshkaBatchTopKTrainer.loss`` / ``get_auxiliary_loss``), in the
reference's own layout ``x[:, 0]`` = current position, ``x[:, 1]`` = previous position, and
independently of the plugin's code.
"""

from __future__ import annotations

import pytest
import sae_lens  # noqa: F401  (registers plugin architectures)
import torch
import torch.nn.functional as F
from sae_lens import SAE
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE
from sae_lens.saes.sae import TrainStepInput
from sae_lens_ext_plugins.temporal_consistency.data import (
    SyntheticSequenceConfig,
    SyntheticSequences,
)
from sae_lens_ext_plugins.temporal_consistency.metrics import encode_sequences, inference_sae
from sae_lens_ext_plugins.tsae.sae import (
    TSAE,
    TSAETrainingSAE,
    TSAETrainingSAEConfig,
    symmetric_contrastive_loss,
)

from benchmarks.temporal_training import train_together
from sae_lens_ext.data.windows import batch_window, shared_window


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one thread is faster and steadier on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_loss(W_enc, b_enc, W_dec, b_dec, x, k, group_sizes, group_weights, dead):
    """TemporalMatryoshkaBatchTopKTrainer.loss with temporal=True, contrastive=True,
    temp_alpha=0.1, auxk_alpha=1/32 (the reference's defaults), W_dec rows of unit norm."""

    def encode(v):
        post_relu = F.relu((v - b_dec) @ W_enc + b_enc)
        flat = post_relu.flatten()
        top = flat.topk(k * v.size(0), sorted=False, dim=-1)
        codes = torch.zeros_like(flat).scatter_(-1, top.indices, top.values)
        return codes.reshape(post_relu.shape), post_relu

    f, post_relu = encode(x[:, 0])
    f_temp, _ = encode(x[:, 1])
    x_reconstruct = torch.zeros_like(x[:, 0]) + b_dec
    W_dec_chunks = torch.split(W_dec, group_sizes, dim=0)
    f_chunks = torch.split(f, group_sizes, dim=1)
    f_temp_chunks = torch.split(f_temp, group_sizes, dim=1)
    x_reconstruct = x_reconstruct + f_chunks[0] @ W_dec_chunks[0]
    l2_losses = [((x[:, 0] - x_reconstruct).pow(2).sum(dim=-1) * group_weights[0]).mean()]
    logits_per_curr_t = f_chunks[0] @ f_temp_chunks[0].T
    labels = torch.arange(logits_per_curr_t.shape[0])
    temp_loss = (
        F.cross_entropy(logits_per_curr_t, labels) + F.cross_entropy(logits_per_curr_t.T, labels)
    ) / 2
    for i in range(1, len(group_sizes)):
        x_reconstruct = x_reconstruct + f_chunks[i] @ W_dec_chunks[i]
        l2_losses.append((x[:, 0] - x_reconstruct).pow(2).sum(dim=-1).mean() * group_weights[i])
    mean_l2_loss = torch.stack(l2_losses).mean()
    residual = (x[:, 0] - x_reconstruct).detach()
    auxk_loss = torch.tensor(0.0)
    if int(dead.sum()) > 0:
        k_aux = min(x.shape[-1] // 2, int(dead.sum()))
        auxk_latents = torch.where(dead[None], post_relu, -torch.inf)
        auxk_acts, auxk_indices = auxk_latents.topk(k_aux, sorted=False)
        auxk_acts_BF = torch.zeros_like(post_relu).scatter_(-1, auxk_indices, auxk_acts)
        l2_loss_aux = (residual - auxk_acts_BF @ W_dec).pow(2).sum(dim=-1).mean()
        denom = (residual - residual.mean(dim=0)[None, :]).pow(2).sum(dim=-1).mean()
        auxk_loss = (l2_loss_aux / denom).nan_to_num(0.0)
    return mean_l2_loss + auxk_loss / 32 + 0.1 * temp_loss


def _step_input(x, dead):
    return TrainStepInput(
        sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False
    )


def _random_tsae(d_in=12, d_sae=40, k=3, seed=0) -> TSAETrainingSAE:
    torch.manual_seed(seed)
    sae = TSAETrainingSAE(TSAETrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae) / d_in**0.5)
        sae.b_enc.copy_(0.1 * torch.randn(d_sae))
        sae.W_dec.copy_(torch.randn(d_sae, d_in))
        sae.b_dec.copy_(0.1 * torch.randn(d_in))
    return sae


def test_registered_next_to_upstream_and_declares_pairs():
    assert get_sae_training_class("tsae")[0] is TSAETrainingSAE
    assert get_sae_class("tsae")[0] is TSAE
    assert get_sae_class("temporal")[0] is not TSAE  # upstream's own, different method
    assert issubclass(TSAETrainingSAE, MatryoshkaBatchTopKTrainingSAE)
    cfg = TSAETrainingSAEConfig(d_in=8, d_sae=100)
    assert cfg.batch_window() == 2
    assert shared_window([batch_window(cfg), 1]) == 2
    assert cfg.matryoshka_widths == [20, 100]  # reference group_fractions [0.2, 0.8]
    assert cfg.weights() == pytest.approx([0.2, 0.8])  # reference script's group_weights
    assert (cfg.k, cfg.temporal_coefficient, cfg.aux_loss_coefficient) == (20, 0.1, 1 / 32)
    with pytest.raises(ValueError, match="group_weights"):
        TSAETrainingSAEConfig(d_in=8, d_sae=100, group_weights=[1.0])


@pytest.mark.parametrize("unit_decoder", [True, False])
@pytest.mark.parametrize("n_dead", [0, 3, 30])
def test_loss_matches_reference_formula(unit_decoder, n_dead):
    sae = _random_tsae()
    with torch.no_grad():
        if unit_decoder:
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
    x = torch.randn(2 * 16, 12)  # rows 2i, 2i+1: positions t, t+1
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.randperm(40)[:n_dead]] = True
    out = sae.training_forward_pass(_step_input(x, dead))
    # upstream's rescale_acts_by_decoder_norm treats the decoder as normalised: the
    # reference sees unit-norm rows and the encoder scaled accordingly
    norms = sae.W_dec.detach().norm(dim=1)
    ref = reference_loss(
        (sae.W_enc.detach() * norms).requires_grad_(),
        (sae.b_enc.detach() * norms).requires_grad_(),
        (sae.W_dec.detach() / norms[:, None]).requires_grad_(),
        sae.b_dec.detach().clone().requires_grad_(),
        torch.stack([x[1::2], x[0::2]], dim=1),  # reference layout: x[:, 0] current
        k=3,
        group_sizes=[8, 32],
        group_weights=[0.2, 0.8],
        dead=dead,
    )
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.losses["temporal_loss"].item() > 0
    assert (out.losses["auxiliary_reconstruction_loss"].item() > 0) == (n_dead > 0)


def test_gradients_match_reference_up_to_the_decoder_norm_constraint():
    """With unit-norm decoder rows, encoder and bias gradients equal the reference's; the
    decoder gradient equals it after removing each row's parallel component (what the
    reference does with remove_gradient_parallel_to_decoder_directions)."""
    sae = _random_tsae(seed=1)
    with torch.no_grad():
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
    x = torch.randn(32, 12)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[:5] = True
    sae.training_forward_pass(_step_input(x, dead)).loss.backward()
    params = [p.detach().clone().requires_grad_() for p in (sae.W_enc, sae.b_enc, sae.W_dec)]
    b_dec = sae.b_dec.detach().clone().requires_grad_()
    pairs = torch.stack([x[1::2], x[0::2]], dim=1)
    reference_loss(*params, b_dec, pairs, 3, [8, 32], [0.2, 0.8], dead).backward()
    torch.testing.assert_close(sae.W_enc.grad, params[0].grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sae.b_enc.grad, params[1].grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sae.b_dec.grad, b_dec.grad, rtol=1e-4, atol=1e-6)
    w = sae.W_dec.detach()

    def orthogonal(g):
        return g - (g * w).sum(-1, keepdim=True) * w

    torch.testing.assert_close(
        orthogonal(sae.W_dec.grad), orthogonal(params[2].grad), rtol=1e-4, atol=1e-6
    )


def test_symmetric_contrastive_term_prefers_matching_pairs():
    torch.manual_seed(0)
    codes = torch.rand(16, 6).relu()
    matched = symmetric_contrastive_loss(codes, codes)
    shuffled = symmetric_contrastive_loss(codes, codes[torch.randperm(16)])
    assert matched < shuffled
    assert symmetric_contrastive_loss(codes, codes).item() == pytest.approx(
        symmetric_contrastive_loss(codes.flip(0), codes.flip(0)).item()
    )


def test_odd_batch_is_refused():
    sae = _random_tsae()
    with pytest.raises(ValueError, match="pairs of adjacent positions"):
        sae.training_forward_pass(_step_input(torch.randn(31, 12), None))


@pytest.fixture(scope="module")
def trained():
    """T-SAE with and without its temporal term, trained in lockstep on the same pairs."""
    cfg = SyntheticSequenceConfig(
        num_features=32, d_in=16, seq_len=32, n_sequences=128, orthogonalize=False, seed=0
    )
    data = SyntheticSequences(cfg)
    held_out = SyntheticSequences(
        SyntheticSequenceConfig(**{**cfg.__dict__, "seed": 1, "n_sequences": 32}),
        features_from=data,
    )
    cfgs = {
        name: TSAETrainingSAEConfig(d_in=16, d_sae=64, k=4, temporal_coefficient=c)
        for name, c in (("tsae", 0.1), ("no_temporal", 0.0))
    }
    results = train_together(cfgs, data, training_steps=150, batch_size=256, lr=3e-3)
    return results, held_out


def test_short_training_reconstructs_and_the_temporal_term_acts(trained):
    results, held_out = trained
    pairs = held_out.activations[:, :32].reshape(-1, 2, 16)
    contrastive = {}
    for name, result in results.items():
        sae = result.sae
        assert result.history[-1]["mse_loss"] < 0.5 * result.history[0]["mse_loss"]
        with torch.no_grad():
            codes = [inference_sae(sae).encode(pairs[:, i]) for i in (1, 0)]
        high = slice(0, sae.cfg.matryoshka_widths[0])
        contrastive[name] = symmetric_contrastive_loss(codes[0][:, high], codes[1][:, high])
    assert contrastive["tsae"] < contrastive["no_temporal"]


def test_save_load_round_trip_is_exact(trained, tmp_path):
    results, held_out = trained
    sae = results["tsae"].sae
    sae.save_inference_model(tmp_path / "tsae")
    loaded = SAE.load_from_disk(tmp_path / "tsae")
    assert type(loaded) is TSAE
    assert loaded.cfg.matryoshka_widths == sae.cfg.matryoshka_widths
    assert loaded.high_level_latents == slice(0, 12)
    x = held_out.activations.reshape(-1, 16)
    with torch.no_grad():
        # the trained SAE at its learned threshold: JumpReLU on the rescaled pre-activation
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        pre = pre * sae.W_dec.norm(dim=-1)
        expected = pre.relu() * (pre > sae.topk_threshold)
        torch.testing.assert_close(loaded.encode(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(loaded.encode(x), inference_sae(sae).encode(x), rtol=0, atol=0)
        recon = expected @ (sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)) + sae.b_dec
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), recon, rtol=0, atol=1e-5)
    l0 = (encode_sequences(loaded, held_out) != 0).float().sum(-1).mean()
    assert 2 < l0 < 8  # the threshold keeps about k = 4 per token


def test_saving_an_untrained_tsae_fails(tmp_path):
    with pytest.raises(RuntimeError, match="trained 0 steps"):
        _random_tsae().save_inference_model(tmp_path / "x")
