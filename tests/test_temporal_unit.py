"""Unit tests of the temporal_consistency architecture, its loss terms, data and metrics."""

from __future__ import annotations

import math

import pytest
import sae_lens  # noqa: F401  (registers plugin architectures)
import torch
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import SAE, TrainStepInput
from sae_lens_ext_plugins.temporal_consistency.data import (
    SyntheticSequenceConfig,
    SyntheticSequences,
)
from sae_lens_ext_plugins.temporal_consistency.losses import (
    contrastive_penalty,
    normalized_penalty,
    variation_penalty,
)
from sae_lens_ext_plugins.temporal_consistency.metrics import (
    autocorrelation,
    cluster_latents,
    feature_correlation,
    lag_autocorrelation,
    redundant_pairs,
)
from sae_lens_ext_plugins.temporal_consistency.sae import (
    TemporalConsistencySAE,
    TemporalConsistencySAEConfig,
    TemporalConsistencyTrainingSAE,
    TemporalConsistencyTrainingSAEConfig,
)

from benchmarks.temporal_training import train_on_sequences
from sae_lens_ext.data.windows import BatchLayoutError, mark_layout_served

TC = TemporalConsistencyTrainingSAEConfig


def step(sae, x, n=0):
    coefficients = {
        k: (v.value if hasattr(v, "value") else v) for k, v in sae.get_coefficients().items()
    }
    return sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients=coefficients,
            dead_neuron_mask=None,
            n_training_steps=n,
            is_logging_step=False,
        )
    )


@pytest.fixture(scope="module")
def small_data() -> SyntheticSequences:
    return SyntheticSequences(
        SyntheticSequenceConfig(
            num_features=16, d_in=8, seq_len=16, n_sequences=32, orthogonalize=False, seed=0
        )
    )


# --- config -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temporal_window": 1}, "temporal_window"),
        ({"temporal_window": 4, "temporal_stride": 4}, "temporal_stride"),
        ({"temporal_coefficient": -1.0}, "temporal_coefficient"),
        ({"activation_fn": "tanh"}, "activation_fn"),
        ({"temporal_loss_form": "l2"}, "temporal_loss_form"),
        ({"temporal_contrastive_temperature": 0.0}, "temporal_contrastive_temperature"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TC(d_in=8, d_sae=16, **kwargs)


def test_registered_with_upstream_and_distinct_from_upstream_temporal():
    from sae_lens.registry import get_sae_class

    assert get_sae_class("temporal_consistency")[0] is TemporalConsistencySAE
    assert get_sae_training_class("temporal_consistency")[0] is TemporalConsistencyTrainingSAE
    assert get_sae_class("temporal")[0] is not TemporalConsistencySAE


# --- loss maths -------------------------------------------------------------------------


def test_penalties_zero_for_constant_windows_and_match_definitions():
    torch.manual_seed(0)
    per_window = torch.rand(6, 1, 5)
    const = per_window.expand(6, 4, 5).reshape(24, 5)
    norms = torch.rand(5) + 0.5
    assert variation_penalty(const, 4, 1, norms).item() == pytest.approx(0.0, abs=1e-7)
    assert normalized_penalty(const, 4, 1).item() == pytest.approx(0.0, abs=1e-6)

    f = torch.rand(24, 5)
    w = f.reshape(6, 4, 5)
    tv = ((w[:, 2:] - w[:, :-2]).abs() * norms).sum(-1).mean()
    assert variation_penalty(f, 4, 2, norms).item() == pytest.approx(tv.item(), rel=1e-5)
    a, b = w[:, :-1], w[:, 1:]
    ref = ((a - b).pow(2).sum(-1) / (a.pow(2).sum(-1) + b.pow(2).sum(-1) + 1e-6)).mean()
    assert normalized_penalty(f, 4, 1).item() == pytest.approx(ref.item(), rel=1e-4)
    assert normalized_penalty(3 * f, 4, 1).item() == pytest.approx(ref.item(), rel=1e-4)


def test_contrastive_prefers_consistent_windows():
    torch.manual_seed(0)
    per_window = torch.rand(16, 1, 10)
    consistent = per_window.expand(16, 4, 10).reshape(64, 10)
    random = torch.rand(64, 10)
    assert contrastive_penalty(consistent, 4, 1.0, 0.1) < contrastive_penalty(random, 4, 1.0, 0.1)


def relu_codes(n_rows, d_sae, active, always_on=(), seed=0):
    """Pre-activations and a bias giving ReLU codes with ``active`` latents per row (plus
    the ``always_on`` latents, which fire on every row)."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(n_rows, d_sae, generator=g)
    bias = (1e-3 - pre.topk(active, dim=1).values[:, -1:]).expand(n_rows, d_sae).clone()
    bias[:, list(always_on)] = 5.0
    return pre, bias


@pytest.mark.parametrize("pair_cost_ratio", [2048, 1, 10**9])  # mixed, all dense, all pairs
@pytest.mark.parametrize(
    "n_rows, d_sae, active, fraction, window, stride",
    [
        (256, 64, 6, 1.0, 4, 1),
        (256, 64, 6, 0.5, 4, 2),
        (512, 200, 8, 1.0, 2, 1),
        (480, 96, 5, 0.3, 8, 3),
    ],
)
def test_sparse_contrastive_equals_the_dense_products(
    monkeypatch, pair_cost_ratio, n_rows, d_sae, active, fraction, window, stride
):
    """The sparse path (sums over matching non-zero codes) gives the dense loss and, through
    the ReLU, the dense gradient in the pre-activations, in every mix of its two branches
    (frequent latents as a dense product, rare ones pair by pair)."""
    from sae_lens_ext_plugins.temporal_consistency import contrastive

    monkeypatch.setattr(contrastive, "MAX_DENSITY", 1.0)  # small test sizes are not that sparse
    monkeypatch.setattr(contrastive, "PAIR_COST_RATIO", pair_cost_ratio)
    pre, bias = relu_codes(n_rows, d_sae, active, always_on=(0, 5))
    pre[:4] = -10.0  # rows without any active code
    k = max(1, round(fraction * d_sae))
    grads, losses = [], []
    for sparse in (False, True):
        x = pre.clone().requires_grad_()
        codes = torch.relu(x + bias)
        if sparse:
            assert contrastive.sparse_path_applies(codes, k)
            loss = contrastive_penalty(codes, window, fraction, 0.1, stride)
            assert loss.grad_fn.name() == "SparseWindowInfoNCEBackward"
        else:
            loss = contrastive.dense_window_infonce(codes, window, k, 0.1, stride)
        losses.append(loss)
        grads.append(torch.autograd.grad(2.5 * loss, x)[0])
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_sparse_contrastive_under_bf16_autocast_matches_the_dense_products():
    from sae_lens_ext_plugins.temporal_consistency import contrastive

    pre, bias = relu_codes(256, 512, 8)
    losses, grads = [], []
    for sparse in (False, True):
        x = pre.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            codes = torch.relu(x.bfloat16() + bias.bfloat16())
            assert contrastive.sparse_path_applies(codes, 512)
            fn = contrastive_penalty if sparse else contrastive.dense_window_infonce
            loss = fn(codes, 4, 1.0, 0.1, 1) if sparse else fn(codes, 4, 512, 0.1, 1)
        losses.append(loss.item())
        grads.append(torch.autograd.grad(loss, x)[0])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    # both round the gradient in the codes to bf16 (one ulp: 0.4 %): compare on its scale
    assert (grads[1] - grads[0]).abs().max() <= 1e-2 * grads[0].abs().max()


def test_contrastive_takes_the_dense_products_where_the_sparse_path_would_not_be_exact():
    """Codes that are not a ReLU's output (their zero entries may carry a gradient, e.g.
    GELU or a leaf tensor), dense codes, and tensors on an accelerator (where the sparse path's
    host reads would be syncs) take the dense products."""
    from sae_lens_ext_plugins.temporal_consistency import contrastive

    pre, bias = relu_codes(256, 512, 8)
    relu = torch.relu((pre + bias).requires_grad_())
    assert contrastive.sparse_path_applies(relu, 512)
    assert contrastive.sparse_path_applies(relu.detach(), 512)  # no gradient needed
    assert not contrastive.sparse_path_applies(relu.detach().requires_grad_(), 512)  # a leaf
    gelu = torch.nn.functional.gelu((pre + bias).requires_grad_())
    assert not contrastive.sparse_path_applies(gelu, 512)
    on_accelerator = torch.empty(256, 512, device="meta")  # decided before reading a value
    assert not contrastive.sparse_path_applies(on_accelerator, 512)
    dense = torch.relu(torch.randn(256, 512, requires_grad=True))  # half the latents fire
    assert not contrastive.sparse_path_applies(dense, 512)
    loss = contrastive_penalty(dense, 4, 1.0, 0.1)
    assert loss.grad_fn.name() != "SparseWindowInfoNCEBackward"


def test_tuned_contrastive_step_gives_the_dense_gradients(monkeypatch):
    """A whole training step of the tuned setting (contrastive 1 on all latents, consistency
    off): every parameter's gradient is the one the dense products give."""
    from sae_lens_ext_plugins.temporal_consistency import contrastive, losses

    monkeypatch.setattr(contrastive, "MAX_DENSITY", 1.0)
    cfg = TC(
        d_in=16,
        d_sae=64,
        temporal_coefficient=0.0,
        temporal_contrastive_coefficient=1.0,
        temporal_contrastive_fraction=1.0,
    )
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(1))

    def gradients():
        torch.manual_seed(0)
        sae = TemporalConsistencyTrainingSAE(cfg)
        mark_layout_served(sae)  # the rows are the test's windows
        with torch.no_grad():
            sae.b_enc.fill_(-0.5)  # sparse codes
        step(sae, x).loss.backward()
        return {n: p.grad.clone() for n, p in sae.named_parameters()}

    real, taken = losses.sparse_path_applies, []
    monkeypatch.setattr(
        losses, "sparse_path_applies", lambda *a: taken.append(real(*a)) or taken[-1]
    )
    sparse = gradients()
    assert taken == [True]
    monkeypatch.setattr(losses, "sparse_path_applies", lambda *a: False)
    dense = gradients()
    for name, expected in dense.items():
        torch.testing.assert_close(sparse[name], expected, rtol=1e-5, atol=1e-7, msg=name)


# --- training step checks -------------------------------------------------------------------


def test_batch_not_multiple_of_window_fails_at_first_step():
    sae = TemporalConsistencyTrainingSAE(TC(d_in=8, d_sae=16, temporal_window=4))
    with pytest.raises(
        BatchLayoutError, match=r"training step 0: .*windows of 4 .*train_batch_size_tokens"
    ):
        step(sae, torch.randn(30, 8))


def test_temporal_term_stacks_on_freq_ordered_through_options():
    try:
        cls, cfg_cls = get_sae_training_class("freq_ordered")
    except (KeyError, ValueError):
        pytest.skip("freq_ordered plugin not installed")
    cfg = cfg_cls(
        d_in=8,
        d_sae=16,
        loss_terms="temporal_consistency=0.5",
        loss_term_options="temporal_window=4,temporal_loss_form=normalized",
    )
    sae = cls(cfg)
    out = step(sae, torch.randn(32, 8))
    assert "temporal_consistency_loss" in out.losses
    assert out.losses["temporal_consistency_loss"].item() > 0
    assert cfg.batch_window() == 4  # the stacked term asks the core for windows of 4
    with pytest.raises(BatchLayoutError, match="windows of 4"):
        step(cls(cfg), torch.randn(30, 8))


def test_nan_activations_name_the_step():
    """Under upstream's runners the SAE runs the core's guard itself: device-side each
    step, checked every GUARD_CHECK_EVERY steps (here: explicitly)."""
    sae = TemporalConsistencyTrainingSAE(TC(d_in=8, d_sae=16))
    x = torch.randn(32, 8)
    step(sae, x, n=6)
    x[3, 2] = float("nan")
    step(sae, x, n=7)
    step(sae, torch.randn(32, 8), n=8)
    with pytest.raises(FloatingPointError, match=r"training step 7: .*NaN/inf"):
        sae.guard.check()


def test_silent_sae_is_an_error():
    sae = TemporalConsistencyTrainingSAE(TC(d_in=8, d_sae=16, max_silent_steps=3))
    with torch.no_grad():
        sae.b_enc.fill_(-1e3)
    for n in range(2):
        step(sae, torch.randn(32, 8), n)
        sae.guard.check()
    step(sae, torch.randn(32, 8), 2)
    with pytest.raises(
        RuntimeError, match=r"training step 2: no latent has fired for 3 steps.*l1_coefficient"
    ):
        sae.guard.check()


def test_saving_a_never_firing_sae_fails(tmp_path):
    sae = TemporalConsistencyTrainingSAE(TC(d_in=8, d_sae=16))
    sae.save_inference_model(tmp_path / "untrained")  # e.g. weights loaded: not refused
    with torch.no_grad():
        sae.b_enc.fill_(-1e3)
    step(sae, torch.randn(32, 8))
    with pytest.raises(RuntimeError, match="no latent fired"):
        sae.save_inference_model(tmp_path / "b")


def test_zero_training_steps_is_an_error(small_data):
    with pytest.raises(ValueError, match="0 steps is an error"):
        train_on_sequences(TC(d_in=8, d_sae=16), small_data, training_steps=0, batch_size=32)


# --- inference = training, save/load, folding -----------------------------------------------


@pytest.mark.parametrize("activation_fn", ["relu", "gelu"])
def test_saved_inference_sae_matches_training_sae(tmp_path, activation_fn):
    torch.manual_seed(0)
    sae = TemporalConsistencyTrainingSAE(TC(d_in=8, d_sae=16, activation_fn=activation_fn))
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    step(sae, torch.randn(32, 8))
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert isinstance(loaded, TemporalConsistencySAE)
    assert loaded.cfg.activation_fn == activation_fn
    x = torch.randn(20, 8)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x), sae(x))


def test_fold_w_dec_norm_relu_preserves_outputs_gelu_refuses():
    torch.manual_seed(0)
    cfg = TemporalConsistencySAEConfig(d_in=8, d_sae=16)
    sae = TemporalConsistencySAE(cfg)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(16, 1) * 3)
        sae.b_enc.normal_()
    x = torch.randn(10, 8)
    before = sae(x).detach()
    sae.fold_W_dec_norm()
    assert torch.allclose(sae(x), before, atol=1e-5)
    gelu = TemporalConsistencySAE(
        TemporalConsistencySAEConfig(d_in=8, d_sae=16, activation_fn="gelu")
    )
    with pytest.raises(NotImplementedError, match="homogeneous"):
        gelu.fold_W_dec_norm()


def test_gelu_is_not_sparse_and_l0_says_so(small_data):
    from sae_lens_ext_plugins.temporal_consistency.metrics import evaluate_on_sequences

    result = train_on_sequences(
        TC(d_in=8, d_sae=16, activation_fn="gelu"), small_data, training_steps=3, batch_size=64
    )
    assert evaluate_on_sequences(result.sae, small_data)["l0"] > 15  # ~all 16 latents non-zero


# --- data -------------------------------------------------------------------------------------


def test_synthetic_sequences_match_their_markov_chains():
    data = SyntheticSequences(
        SyntheticSequenceConfig(
            num_features=8,
            d_in=16,
            seq_len=200,
            n_sequences=200,
            firing_probability=0.2,
            persistence=(0.3, 0.9),
            magnitude_std=0.0,
            magnitude_jitter=0.0,
            noise_std=0.0,
            orthogonalize=False,
            seed=1,
        )
    )
    assert data.activations.shape == (200, 200, 16)
    rate = (data.feature_acts > 0).float().mean(dim=(0, 1))
    assert torch.allclose(rate, torch.full((8,), 0.2), atol=0.03)
    # constant magnitudes: value autocorrelation = on/off chain autocorrelation (rho - a)^k
    assert torch.allclose(autocorrelation(data.feature_acts, 2), data.binary_autocorrelation(2), atol=0.04)
    recon = data.feature_acts @ data.feature_vectors
    assert torch.allclose(recon, data.activations, atol=1e-5)


# --- metrics ----------------------------------------------------------------------------------


def _identity_sae(d: int) -> TemporalConsistencySAE:
    sae = TemporalConsistencySAE(TemporalConsistencySAEConfig(d_in=d, d_sae=d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_dec.zero_()
        sae.b_enc.zero_()
    return sae


def test_metrics_on_known_sequences():
    seq_len = 64
    t = torch.arange(seq_len)
    blocks = ((t // 8) % 2).float()  # runs of 8
    alternating = (t % 2).float()
    x = torch.stack([blocks, alternating, blocks, torch.zeros(seq_len)], -1)[None].repeat(3, 1, 1)
    sae = _identity_sae(4)
    acf = lag_autocorrelation(sae, x, max_lag=2)
    assert acf.shape == (4, 2)
    assert acf[0, 0].item() == pytest.approx(autocorrelation(blocks[None, :, None], 1)[0, 0].item())
    assert acf[0, 0] > 0.7
    assert acf[1, 0].item() == pytest.approx(-1.0, abs=0.05)
    assert acf[1, 1].item() == pytest.approx(1.0, abs=0.05)
    assert acf[3].abs().sum() == 0  # dead latent: 0, not NaN
    corr = feature_correlation(sae, x)
    assert corr[0, 2].item() == pytest.approx(1.0, abs=1e-5)
    pairs = redundant_pairs(sae, x, threshold=0.9)
    assert [(i, j) for i, j, _ in pairs] == [(0, 2)]
    clusters = cluster_latents(sae, x, n_clusters=2)
    assert clusters.labels[3] == -1
    assert sum(s["size"] for s in clusters.summaries) == 3
    assert {"size", "firing_rate", "lag1_autocorrelation", "latents"} <= set(clusters.summaries[0])


def test_ablation_and_plots(tmp_path, small_data):
    from sae_lens_ext_plugins.temporal_consistency.plots import (
        plot_metrics_comparison,
        plot_training_curves,
    )

    from benchmarks.temporal_training import run_ablation

    rows = run_ablation(
        [2, 4],
        [0.0, 0.1],
        small_data,
        sae_config={"d_sae": 16},
        training_steps=4,
        batch_size=32,
        lr=1e-3,
    )
    assert [r["name"] for r in rows] == ["standard", "w2_c0", "w2_c0.1", "w4_c0", "w4_c0.1"]
    for r in rows:
        assert r["n_steps"] == 4
        assert {
            "mcc",
            "explained_variance",
            "l0",
            "autocorr_error",
            "redundant_pairs",
            "step_time_ratio",
        } <= set(r)
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in r.values())
    result = train_on_sequences(
        TC(d_in=8, d_sae=16), small_data, training_steps=5, batch_size=32, log_every=2
    )
    assert [h["step"] for h in result.history] == [0, 2, 4]
    a = plot_metrics_comparison(rows, tmp_path / "metrics_comparison.png")
    b = plot_training_curves({"tc": result.history}, tmp_path / "training_curves.png")
    assert a.stat().st_size > 1000 and b.stat().st_size > 1000


def test_variation_penalty_backward_matches_autograd():
    """The hand-written backward equals autograd's on the plain formula (fp64)."""
    torch.manual_seed(0)
    f = torch.relu(torch.randn(24, 7, dtype=torch.float64)).requires_grad_()
    norms = (torch.rand(7, dtype=torch.float64) + 0.5).requires_grad_()
    for window, stride in [(4, 1), (4, 3), (6, 2)]:
        loss = variation_penalty(f, window, stride, norms)
        g_f, g_n = torch.autograd.grad(loss, (f, norms))
        w = f.reshape(-1, window, 7)
        ref = ((w[:, stride:] - w[:, :-stride]).abs() @ norms).mean()
        r_f, r_n = torch.autograd.grad(ref, (f, norms))
        assert torch.allclose(loss, ref)
        assert torch.allclose(g_f, r_f) and torch.allclose(g_n, r_n)
    assert torch.autograd.gradcheck(
        lambda a, b: variation_penalty(a, 4, 1, b), (f.detach().requires_grad_(), norms)
    )


def test_loss_term_options_are_checked_against_the_enabled_terms():
    _, cfg_cls = get_sae_training_class("freq_ordered")
    with pytest.raises(ValueError, match="no enabled loss term reads 'temporal_windw'"):
        cfg_cls(
            d_in=8,
            d_sae=16,
            loss_terms="temporal_consistency=0.5",
            loss_term_options="temporal_windw=4",
        )
    with pytest.raises(ValueError, match="no enabled loss term reads 'temporal_window'"):
        cfg_cls(d_in=8, d_sae=16, loss_term_options="temporal_window=4")  # term not enabled
    _, tc_cfg_cls = get_sae_training_class("temporal_consistency")
    with pytest.raises(ValueError, match=r"'temporal_window' is a field .*; set it directly"):
        tc_cfg_cls(d_in=8, d_sae=16, loss_term_options="temporal_window=8")


def test_ground_truth_metrics_with_fewer_latents_than_features(small_data):
    """``d_sae`` below the number of true features: MCC is upstream's (mean over the
    ``d_sae`` matched pairs), unmatched features are marked, nothing reads garbage."""
    from sae_lens.synthetic.evals import mean_correlation_coefficient
    from sae_lens_ext_plugins.temporal_consistency.metrics import (
        evaluate_on_sequences,
        match_latents,
        matched_cosines,
    )

    n_features = small_data.feature_vectors.shape[0]
    d_sae = n_features - 2
    sae = TemporalConsistencySAE(TemporalConsistencySAEConfig(d_in=8, d_sae=d_sae))
    matched, cosines = match_latents(sae, small_data.feature_vectors), matched_cosines(
        sae, small_data.feature_vectors
    )
    assert (matched == -1).sum() == 2 and cosines.isnan().sum() == 2
    assert sorted(matched[matched >= 0].tolist()) == list(range(d_sae))
    metrics = evaluate_on_sequences(sae, small_data)
    upstream = mean_correlation_coefficient(sae.W_dec.detach(), small_data.feature_vectors)
    assert metrics["mcc"] == pytest.approx(upstream, abs=1e-5)
    assert all(v == v for v in metrics.values())  # no NaN
