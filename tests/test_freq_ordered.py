"""Unit tests of the frequency-ordered SAE: math, config, folding, reordering, training."""

from __future__ import annotations

import math

import pytest
import sae_lens  # noqa: F401  (registers plugin architectures)
import torch
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens_ext_plugins.freq_ordered.losses import (
    bias_routed_gap,
    rearrangement_gap,
    straight_through_frequency,
)
from sae_lens_ext_plugins.freq_ordered.metrics import (
    measure_frequencies,
    ordering_spearman,
    prefix_explained_variance,
)
from sae_lens_ext_plugins.freq_ordered.reorder import reorder_by_frequency
from sae_lens_ext_plugins.freq_ordered.sae import (
    FreqOrderedSAE,
    FreqOrderedSAEConfig,
    FreqOrderedTrainingSAE,
    FreqOrderedTrainingSAEConfig,
)

D_IN, D_SAE = 8, 32
OPTIONS = {
    "plain": {},
    "layer_norm": {"layer_norm": True},
    "skip": {"skip_projection": True},
    "attention": {"attention": True, "attention_window": 4},
    "all": {"layer_norm": True, "skip_projection": True, "attention": True, "attention_window": 4},
}


def randomized(sae, seed: int = 0):
    """Give every parameter random values (zero-initialised ones included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            scale = 1.0 if name.startswith("ln_weight") else 0.3
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if name == "ln_weight" else 0))
    return sae


def training_sae(**kw) -> FreqOrderedTrainingSAE:
    sae = FreqOrderedTrainingSAE(FreqOrderedTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, **kw))
    sae.set_training_steps(1000)  # as sae-lens's loops do (else a warning on the fallback)
    return sae


def step(sae, x, n: int = 0, dead=None):
    coefficients = {k: v.value for k, v in sae.get_coefficients().items()}
    return sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients=coefficients,
            dead_neuron_mask=dead,
            n_training_steps=n,
            is_logging_step=False,
        )
    )


# --- the ordering loss ---------------------------------------------------------------
def test_rearrangement_gap_zero_iff_non_increasing():
    assert rearrangement_gap(torch.tensor([0.5, 0.3, 0.3, 0.1, 0.0])).item() == pytest.approx(0)
    assert rearrangement_gap(torch.tensor([0.1, 0.5, 0.3])).item() > 0
    for _ in range(20):
        p = torch.rand(16)
        assert rearrangement_gap(p).item() >= -1e-7


def test_ordering_gradient_pushes_out_of_order_latents():
    value = torch.tensor([0.1, 0.5, 0.3, 0.2])  # latent 1 fires more than latent 0
    hidden = torch.zeros(64, 4, requires_grad=True)
    p = straight_through_frequency(hidden, value, temperature=0.1)
    assert torch.allclose(p, value)  # value is the hard estimate
    rearrangement_gap(p).backward()
    g = hidden.grad.sum(0)
    assert g[0] < 0 < g[1]  # descent raises latent 0's rate, lowers latent 1's
    bias = torch.zeros(4, requires_grad=True)  # the bias route: same gradient, into the bias
    rearrangement_gap(straight_through_frequency(hidden, value, 0.1, lever=bias)).backward()
    torch.testing.assert_close(bias.grad, g)
    closed = torch.zeros(4, requires_grad=True)  # closed form used in training: same value, grad
    loss = bias_routed_gap(hidden, value, 0.1, 0, closed)
    loss.backward()
    assert loss.item() == pytest.approx(rearrangement_gap(value).item())
    torch.testing.assert_close(closed.grad, g)


# --- config ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"ordering_coefficient": -0.1}, "ordering_coefficient"),
        ({"l1_coefficient": -1.0}, "l1_coefficient"),
        ({"skip_scale": -0.1}, "skip_scale"),
        ({"sort_latents_every": -1}, "sort_latents_every"),
        ({"frequency_decay": 1.0}, "frequency_decay"),
        ({"attention": True}, "attention_window"),
        ({"loss_terms": "no_such_term=1"}, "no_such_term"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FreqOrderedTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, **kwargs)


def test_unknown_option_and_d_in_mismatch_are_refused(tmp_path):
    with pytest.raises(TypeError, match="attention_heads"):
        FreqOrderedTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, attention_heads=2)
    sae = training_sae()
    with pytest.raises(ValueError, match="d_in"):
        sae.encode(torch.randn(3, D_IN + 1))
    sae.save_inference_model(tmp_path)
    other = FreqOrderedSAE(FreqOrderedSAEConfig(d_in=D_IN * 2, d_sae=D_SAE))
    from safetensors.torch import load_file

    with pytest.raises(ValueError, match="d_in"):
        other.process_state_dict_for_loading(load_file(tmp_path / "sae_weights.safetensors"))


# --- inference == training, folding ----------------------------------------------------
@pytest.mark.parametrize("option", OPTIONS)
def test_inference_class_computes_what_training_computed(option, tmp_path):
    sae = randomized(training_sae(**OPTIONS[option]))
    x = torch.randn(16, D_IN)
    sae.save_inference_model(tmp_path)
    loaded = FreqOrderedSAE.load_from_disk(tmp_path)
    assert type(loaded) is FreqOrderedSAE
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)
    # training decodes in prefix blocks (the default prefix mode): a sum in another order
    torch.testing.assert_close(loaded(x), sae(x), rtol=1e-6, atol=1e-6)
    sae.eval()  # outside training it is the same decode: bit for bit
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)


@pytest.mark.parametrize("option", OPTIONS)
def test_fold_W_dec_norm_keeps_outputs(option):
    sae = randomized(
        FreqOrderedSAE(FreqOrderedSAEConfig(d_in=D_IN, d_sae=D_SAE, **OPTIONS[option]))
    )
    x = torch.randn(32, D_IN)
    before = sae(x)
    sae.fold_W_dec_norm()
    torch.testing.assert_close(sae(x), before, rtol=0, atol=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))


@pytest.mark.parametrize("option", ["skip", "attention"])
def test_fold_activation_norm_scaling_factor(option):
    sae = randomized(
        FreqOrderedSAE(FreqOrderedSAEConfig(d_in=D_IN, d_sae=D_SAE, **OPTIONS[option]))
    )
    x, s = torch.randn(16, D_IN), 2.5
    before = sae.encode(x * s)
    sae.fold_activation_norm_scaling_factor(s)
    torch.testing.assert_close(sae.encode(x), before, rtol=1e-5, atol=1e-5)


# --- attention --------------------------------------------------------------------------
def test_attention_is_causal_within_windows_only():
    sae = randomized(
        FreqOrderedSAE(FreqOrderedSAEConfig(d_in=D_IN, d_sae=D_SAE, **OPTIONS["attention"]))
    )
    x = torch.randn(12, D_IN)
    y = x.clone()
    y[5] += 3.0  # second window (rows 4..7), position 1
    a, b = sae.encode(x), sae.encode(y)
    assert torch.equal(a[:4], b[:4]) and torch.equal(a[8:], b[8:])  # other windows untouched
    assert torch.equal(a[4], b[4])  # earlier position of the same window untouched
    assert not torch.equal(a[6], b[6])  # later position of the same window sees it
    # (batch, seq, d) input: blocks of the window along seq, same as the 2-D layout
    torch.testing.assert_close(sae.encode(x.reshape(3, 4, D_IN)).reshape(12, -1), a)
    with pytest.raises(ValueError, match="attention_window"):
        sae.encode(torch.randn(10, D_IN))


# --- reordering and metrics -------------------------------------------------------------
def test_metrics_on_a_known_sae():
    sae = randomized(StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)))
    x = torch.randn(500, D_IN)
    freqs = measure_frequencies(sae, x, batch_size=64)
    torch.testing.assert_close(freqs, (sae.encode(x) != 0).float().mean(0))
    assert ordering_spearman(torch.arange(10, 0, -1)) == pytest.approx(-1)
    assert ordering_spearman([1, 2, 2, 3]) > 0.9
    assert math.isnan(ordering_spearman(torch.ones(5)))
    ev = prefix_explained_variance(sae, x, (0.0, 0.5, 1.0))
    x_hat = sae(x)
    full = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev[1.0] == pytest.approx(full.item(), abs=1e-5)
    acts = sae.encode(x)
    acts[:, 16:] = 0
    half = 1 - (x - sae.decode(acts)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev[0.5] == pytest.approx(half.item(), abs=1e-5)


def _upstream(arch: str):
    from sae_lens.registry import get_sae_class

    cls, cfg_cls = get_sae_class(arch)
    extra = {"k": 4} if arch == "topk" else {}
    return randomized(cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **extra)))


@pytest.mark.parametrize(
    "arch", ["standard", "topk", "jumprelu", "gated", *[f"fo:{o}" for o in OPTIONS]]
)
def test_reorder_is_exact(arch):
    if arch.startswith("fo:"):
        cfg = FreqOrderedSAEConfig(d_in=D_IN, d_sae=D_SAE, **OPTIONS[arch[3:]])
        sae = randomized(FreqOrderedSAE(cfg))
    else:
        sae = _upstream(arch)
    if arch == "jumprelu":
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(D_SAE) * 0.3)
    x = torch.randn(64, D_IN)
    acts, out = sae.encode(x), sae(x)
    freqs = measure_frequencies(sae, x)
    perm = reorder_by_frequency(sae, freqs)
    # float32: only the decoder's summation order changes
    torch.testing.assert_close(sae(x), out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sae.encode(x), acts[:, perm], rtol=1e-6, atol=1e-6)
    assert ordering_spearman(measure_frequencies(sae, x)) <= ordering_spearman(freqs)
    assert torch.all(torch.diff(measure_frequencies(sae, x)) <= 0)


def test_reorder_refuses_unsupported():
    from sae_lens.registry import get_sae_training_class

    cls, cfg_cls = get_sae_training_class("matryoshka_batchtopk")
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, k=4, matryoshka_widths=[8, D_SAE]))
    with pytest.raises(NotImplementedError, match="matryoshka"):
        reorder_by_frequency(sae, torch.rand(D_SAE))


def test_plots(tmp_path):
    from sae_lens_ext_plugins.freq_ordered.plots import plot_frequencies

    sae = training_sae()
    step(sae, torch.randn(64, D_IN))
    paths = plot_frequencies(sae, tmp_path)
    assert [p.name for p in paths] == ["feature_frequencies.png", "frequency_ordering.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


# --- training ---------------------------------------------------------------------------
def test_frequency_buffer_tracks_firing_rate_and_is_saved(tmp_path):
    sae = training_sae(sort_latents_every=0)
    x = torch.randn(256, D_IN)
    out = step(sae, x)
    torch.testing.assert_close(sae.latent_frequency, (out.feature_acts > 0).float().mean(0))
    assert "frequency_ordering_loss" in out.losses and "l1_loss" in out.losses
    sae.save_model(tmp_path)
    resumed = training_sae(sort_latents_every=0)
    resumed.load_weights_from_checkpoint(tmp_path)
    assert torch.equal(resumed.latent_frequency, sae.latent_frequency)
    assert resumed.frequency_updates.item() == 1


def test_adaptive_l1_is_a_loss_term_scaled_by_cosine():
    sae = training_sae(adaptive_l1=True)
    out = step(sae, torch.randn(64, D_IN))
    assert "adaptive_l1_loss" in out.losses and "l1_loss" not in out.losses
    assert 0 <= float(out.metrics["adaptive_l1_scale"]) <= 1


def _optimizer_step(sae, opt, x, n, dead=None):
    out = step(sae, x, n, dead)
    out.loss.backward()
    opt.step()  # the core's optimizer post-hook applies pending resamples / sorts
    opt.zero_grad()
    return out


def test_sorting_is_exact_and_permutes_adam_state():
    torch.manual_seed(0)
    sae = randomized(training_sae(sort_latents_every=2, ordering_coefficient=0.0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(128, D_IN)
    _optimizer_step(sae, opt, x, 0)
    assert sae.n_sorts == 0
    with torch.no_grad():
        sae.latent_frequency.copy_(torch.rand(D_SAE))
    out, acts = sae(x).detach(), sae.encode(x).detach()
    moments = {n: opt.state[sae.get_parameter(n)]["exp_avg"].clone() for n in ("W_enc", "W_dec")}
    perm = sae.sort_latents(opt)
    assert torch.all(torch.diff(sae.latent_frequency) <= 0)
    torch.testing.assert_close(sae(x), out, rtol=1e-6, atol=1e-6)  # summation order only
    torch.testing.assert_close(sae.encode(x), acts[:, perm], rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.state[sae.W_dec]["exp_avg"], moments["W_dec"][perm])
    torch.testing.assert_close(opt.state[sae.W_enc]["exp_avg"], moments["W_enc"][:, perm])
    _optimizer_step(sae, opt, x, 1)  # (1 + 1) % 2 == 0: sorted after this optimizer step
    assert sae.n_sorts == 2 and not sae._sort_due


@pytest.mark.parametrize("option", ["plain", "all"])
def test_resampling_resets_dead_rows_and_their_moments(option):
    torch.manual_seed(0)
    sae = randomized(training_sae(resample_dead_every=2, sort_latents_every=0, **OPTIONS[option]))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(64, D_IN)
    _optimizer_step(sae, opt, x, 0)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[[3, 7]] = True
    with torch.no_grad():
        sae.latent_frequency[[3, 7]] = 0
    _optimizer_step(sae, opt, x, 1, dead)
    assert sae.n_resampled == 2
    for name in ("W_dec", "b_enc"):
        p = sae.get_parameter(name)
        assert torch.all(opt.state[p]["exp_avg"][[3, 7]] == 0)
    assert torch.all(sae.b_enc[[3, 7]] == 0)
    if option == "all":
        assert torch.all(sae.W_skip[:, [3, 7]] == 0) and torch.all(sae.ln_bias[[3, 7]] == 0)


def test_sorting_does_not_resample_latents_that_fire():
    sae = training_sae(resample_dead_every=1, sort_latents_every=5)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(64, D_IN)
    _optimizer_step(sae, opt, x, 0)
    alive = sae.latent_frequency > 0
    # the trainer's position-indexed counters may call a firing latent dead after a sort
    _optimizer_step(sae, opt, x, 1, dead=alive.clone())
    assert sae.n_resampled == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_step_with_resampling(dtype):
    sae = training_sae(resample_dead_every=1, adaptive_l1=True, **OPTIONS["all"])
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(64, D_IN)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:3] = True
    with torch.autocast("cpu", dtype=dtype):
        out = step(sae, x, 0, dead)
    out.loss.backward()
    opt.step()
    assert sae.n_resampled == 3 and torch.isfinite(out.loss)
    assert sae.W_enc.dtype == torch.float32


def test_resamples_and_sorts_are_counted_in_upstreams_log_dict_and_checkpoints(tmp_path):
    """Under SAE-Lens's own trainer (its optimizer post-hook runs the after-step work): the
    counts reach ``build_train_step_log_dict`` and survive a checkpoint."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = training_sae(sort_latents_every=3, resample_dead_every=4)
    with torch.no_grad():
        sae.b_enc[: D_SAE // 2] = -100.0  # half the latents never fire: resampled
    cfg = SAETrainerConfig(
        total_training_samples=8 * 64, train_batch_size_samples=64, dead_feature_window=2,
        lr=3e-4, lr_end=3e-4,
        logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    for _ in range(8):
        output = trainer.step(torch.randn(64, D_IN))
        trainer.n_training_steps += 1
    log = trainer.build_train_step_log_dict(output, trainer.n_training_samples)
    assert log["metrics/latent_sorts"] == 2  # after steps 3 and 6
    assert log["metrics/resampled_latents"] == sae.n_resampled > 0
    sae.save_model(tmp_path)
    resumed = training_sae(sort_latents_every=3, resample_dead_every=4)
    resumed.load_weights_from_checkpoint(tmp_path)
    assert resumed.training_counts() == {"resampled_latents": sae.n_resampled, "latent_sorts": 2}
