"""The sparse training step (sae_lens_ext/training/sparse/): its pieces compute what the dense
formulas compute, every architecture's sparse step gives the dense step's gradients (fp32 and
bf16 autocast, every loss term), training on either path gives the same SAE (resampling and
the periodic sort included), and the switch takes the path the measured density calls for."""

from __future__ import annotations

import random
import warnings
from typing import Any

import pytest
import sae_lens  # noqa: F401  (registers the plugin architectures)
import torch
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.batchtopk_sae import BatchTopK as UpstreamBatchTopK
from sae_lens.saes.jumprelu_sae import JumpReLU as UpstreamJumpReLU
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.topk_sae import TopK as UpstreamTopK

from sae_lens_ext.data.windows import mark_layout_served
from sae_lens_ext.training import sparse

D_IN, D_SAE, ROWS = 16, 64, 32


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal up to float summation order, relative to the larger magnitude."""
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= rtol * scale


def random_codes(rows: int, latents: int, per_row: int, seed: int = 0) -> sparse.SparseCodes:
    g = torch.Generator().manual_seed(seed)
    cols = torch.rand(rows, latents, generator=g).argsort(1)[:, :per_row].sort(1).values
    r = torch.arange(rows).unsqueeze(1).expand_as(cols).reshape(-1)
    values = torch.rand(r.numel(), generator=g) + 0.1
    return sparse.SparseCodes(r, cols.reshape(-1), values.requires_grad_(), rows, latents)


# --- the pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize("edges", [None, [0, 5, 17, 64], [0, 40]])
def test_decode_and_its_gradients_are_the_dense_products(edges: list[int] | None) -> None:
    codes = random_codes(ROWS, D_SAE, 6)
    W = torch.randn(D_SAE, D_IN, requires_grad=True)
    b = torch.randn(D_IN, requires_grad=True)
    out = sparse.decode_sparse(codes, W, b, edges=edges)
    outs = out if isinstance(out, list) else [out]
    dense = codes.values.detach().new_zeros(ROWS, D_SAE)
    dense[codes.rows, codes.cols] = codes.values.detach()
    dense.requires_grad_()
    bounds = edges[1:] if edges else [D_SAE]
    expected = [dense[:, :k] @ W[:k] + b for k in bounds]
    weights = [torch.randn(ROWS, D_IN) for _ in outs]
    got = torch.autograd.grad(
        sum((o * w).sum() for o, w in zip(outs, weights, strict=True)), (codes.values, W, b)
    )
    want = torch.autograd.grad(
        sum((e * w).sum() for e, w in zip(expected, weights, strict=True)), (dense, W, b)
    )
    for o, e in zip(outs, expected, strict=True):
        close(o, e)
    close(got[0], want[0][codes.rows, codes.cols])
    close(got[1], want[1])
    close(got[2], want[2])


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("input_grad", [False, True])
def test_affine_map_gradients_from_the_entries(scaled: bool, input_grad: bool) -> None:
    """Two weights (a skip projection's form), ``x - shift`` inputs or inputs that carry
    their own gradient, an optional per-latent scale: the entries' backward equals autograd's
    dense one wherever the loss reads only the entries; the dense pre-activations' backward
    too."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, D_IN, generator=g, requires_grad=input_grad)
    W1, W2 = (torch.randn(D_IN, D_SAE, generator=g).requires_grad_() for _ in range(2))
    bias, shift = torch.randn(D_SAE, requires_grad=True), torch.randn(D_IN, requires_grad=True)
    scale = (torch.rand(D_SAE) + 0.5).requires_grad_() if scaled else None
    params = [p for p in (x, W1, W2, bias, shift, scale) if p is not None and p.requires_grad]

    def reference() -> torch.Tensor:
        u = x - shift
        h = u @ W1 + 0.3 * (u @ W2) + bias
        return h * scale if scale is not None else h

    h = reference()
    rows, cols = (h.detach() > 1.0).nonzero().unbind(1)
    weights = torch.randn(rows.numel())
    want = torch.autograd.grad((h[rows, cols] * weights).sum() + h[::5].sigmoid().sum(), params)
    u = x - shift
    inputs, sh = ((u, u), None) if input_grad else ((u.detach(), u.detach()), shift)
    affine = sparse.AffineMap(inputs, (W1, W2), bias, (1.0, 0.3), shift=sh, scale=scale)
    with torch.no_grad():
        unscaled = u @ W1 + 0.3 * (u @ W2) + bias
        hidden = unscaled * scale if scale is not None else unscaled
    values = affine.at(unscaled, rows, cols)
    dense = affine.dense(hidden, unscaled)
    close(values, h[rows, cols].detach())
    got = torch.autograd.grad((values * weights).sum() + dense[::5].sigmoid().sum(), params)
    for a, b in zip(got, want, strict=True):
        close(a, b)


def test_topk_and_batchtopk_pick_upstreams_entries() -> None:
    hidden = torch.randn(ROWS, D_SAE)
    for ours, theirs in (
        (sparse.TopK(5), UpstreamTopK(5)),
        (sparse.BatchTopK(3.5), UpstreamBatchTopK(3.5)),
    ):
        rows, cols = ours.select(hidden)
        dense = torch.zeros_like(hidden).index_put_(
            (rows, cols), ours.apply(hidden[rows, cols], cols)
        )
        assert torch.equal(dense, theirs(hidden))


@pytest.mark.parametrize("ste_to_input", [False, True])
def test_jumprelu_entries_give_upstreams_values_and_gradients(ste_to_input: bool) -> None:
    hidden = torch.randn(ROWS, D_SAE, requires_grad=True)
    threshold = (torch.rand(D_SAE) * 0.5 + 0.3).requires_grad_()
    upstream = UpstreamJumpReLU.apply(hidden, threshold, 0.2, ste_to_input)
    weights = torch.randn(ROWS, D_SAE)
    want = torch.autograd.grad((upstream * weights).sum(), (hidden, threshold))
    act = sparse.JumpReLU(threshold, 0.2, ste_to_input)
    rows, cols = act.select(hidden.detach())
    pre = hidden[rows, cols]
    values = act.apply(pre, cols)
    dense = torch.zeros(ROWS, D_SAE).index_put_((rows, cols), values.detach())
    assert torch.equal(dense, upstream.detach())
    got = torch.autograd.grad((values * weights[rows, cols]).sum(), (hidden, threshold))
    close(got[0], want[0])
    close(got[1], want[1])


@pytest.mark.parametrize("n_latents", [4096, D_SAE], ids=["pairs", "sampled products"])
def test_gram_and_its_gradients(n_latents: int) -> None:
    """Both ways of the Gram matrix: from the pairs of entries on a latent (sparse codes) and
    by sampled products (denser codes: too many pairs)."""
    a = random_codes(ROWS, n_latents, 7, seed=1)
    b = random_codes(ROWS, n_latents, 5, seed=2)
    width = 20
    assert (sparse.codes._pairs_within(a, b, width) is not None) == (n_latents == 4096)
    da, db = a.dense(), b.dense()
    want_logits = da[:, :width] @ db[:, :width].T
    weights = torch.randn(ROWS, ROWS)
    want = torch.autograd.grad((want_logits * weights).sum(), (a.values, b.values))
    for logits in (
        sparse.gram(a, b, first=width),
        sparse.gram(a.first_latents(width), b.first_latents(width)),
    ):
        close(logits, want_logits)
        got = torch.autograd.grad((logits * weights).sum(), (a.values, b.values))
        close(got[0], want[0])
        close(got[1], want[1])


@pytest.mark.parametrize(("window", "stride"), [(4, 1), (4, 3), (8, 2)])
def test_window_variation_is_the_dense_total_variation(window: int, stride: int) -> None:
    g = torch.Generator().manual_seed(window + stride)
    # latents that persist inside a window (what makes the matching matter), some ties
    shared = torch.randn(ROWS // window, 1, D_SAE, generator=g).expand(-1, window, -1)
    noise = 0.3 * torch.randn(ROWS, D_SAE, generator=g)
    dense = (shared.reshape(ROWS, D_SAE) + noise - 1.2).relu()
    dense[5, :8] = dense[5 + stride, :8]  # equal codes at t and t + stride: subgradient 0
    rows, cols = dense.nonzero().unbind(1)
    values = dense[rows, cols].requires_grad_()
    codes = sparse.SparseCodes(rows, cols, values, ROWS, D_SAE)
    norms = (torch.rand(D_SAE, generator=g) + 0.5).requires_grad_()
    f = codes.dense().reshape(-1, window, D_SAE)
    diff = f[:, stride:] - f[:, :-stride]
    want_value = (diff.abs() * norms).sum() / (diff.shape[0] * diff.shape[1])
    want = torch.autograd.grad(want_value, (values, norms))
    value = sparse.window_variation(codes, window, stride, norms)
    close(value, want_value)
    got = torch.autograd.grad(value, (values, norms))
    close(got[0], want[0])
    close(got[1], want[1])


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_decoder_weighted_l1_is_upstreams_penalty(p: float) -> None:
    codes = random_codes(ROWS, D_SAE, 6)
    norms = (torch.rand(D_SAE) + 0.5).requires_grad_()
    dense = codes.dense()
    want_value = (dense * norms).norm(p=p, dim=-1).mean()
    want = torch.autograd.grad(want_value, (codes.values, norms))
    value = sparse.decoder_weighted_l1(codes, norms, p)
    close(value, want_value)
    for a, b in zip(torch.autograd.grad(value, (codes.values, norms)), want, strict=True):
        close(a, b)


def test_codes_report_as_coalesced_coo_with_firing_counts() -> None:
    codes = random_codes(ROWS, D_SAE, 6)
    coo = codes.coo()
    assert coo.is_sparse and coo.is_coalesced() and sparse.codes_of(coo) is codes
    assert torch.equal(coo.to_dense(), codes.dense().detach())
    assert torch.equal(codes.firing(), (codes.dense() != 0).sum(0).float())


# --- whole steps: the sparse step is the dense step -------------------------------------------

# name -> (architecture, config fields)
STEPS: dict[str, tuple[str, dict[str, Any]]] = {
    "freq_ordered": ("freq_ordered", {}),
    "freq_ordered, prefix": ("freq_ordered", {"prefix_coefficient": 1.0}),
    "freq_ordered, skip, attention, adaptive L1": (
        "freq_ordered",
        {"skip_projection": True, "attention": True, "attention_window": 4, "adaptive_l1": True},
    ),
    "temporal_consistency": ("temporal_consistency", {"temporal_stride": 2}),
    "temporal_consistency, normalized, lp 2": (
        "temporal_consistency",
        {"temporal_loss_form": "normalized", "lp_norm": 2.0},
    ),
    "temporal_contrastive, frequency_ordering term": (
        "temporal_consistency",
        {
            "temporal_coefficient": 0.0,
            "temporal_contrastive_coefficient": 0.1,
            "loss_terms": "frequency_ordering=0.3",  # differentiates the dense pre-activations
        },
    ),
    "tsae": ("tsae", {"k": 4}),
}


def make_sae(arch: str, fields: dict[str, Any], mode: str, seed: int = 0) -> Any:
    sae_cls, cfg_cls = get_sae_training_class(arch)
    torch.manual_seed(seed)
    sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, sparse_step=mode, **fields))
    mark_layout_served(sae)
    if hasattr(sae, "_terms"):
        with torch.no_grad():
            sae.b_enc.fill_(-0.03)  # about 10 of 64 latents per row
    sae._prefix_rng = random.Random(0)
    return sae


def step_gradients(
    sae: Any, x: torch.Tensor, autocast: bool
) -> tuple[Any, dict[str, torch.Tensor]]:
    coefficients = {
        n: c.value if hasattr(c, "value") else c for n, c in sae.get_coefficients().items()
    }
    dead = torch.arange(D_SAE) < 12  # the auxiliary losses run
    step = TrainStepInput(x, coefficients, dead, n_training_steps=0, is_logging_step=False)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        output = sae.training_forward_pass(step)
    output.loss.backward()
    return output, {n: p.grad for n, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(STEPS))
def test_sparse_step_gives_the_dense_steps_losses_and_gradients(name: str, autocast: bool) -> None:
    arch, fields = STEPS[name]
    x = torch.randn(ROWS, D_IN, generator=torch.Generator().manual_seed(1))
    dense_out, dense = step_gradients(make_sae(arch, fields, "dense"), x, autocast)
    sparse_out, grads = step_gradients(make_sae(arch, fields, "sparse"), x, autocast)
    assert dense_out.metrics["sparse_step"] == 0.0 and sparse_out.metrics["sparse_step"] == 1.0
    assert sparse_out.feature_acts.is_sparse and not dense_out.feature_acts.is_sparse
    assert torch.equal(sparse_out.feature_acts.to_dense(), dense_out.feature_acts)
    rtol = 2e-2 if autocast else 1e-5  # bf16: the dense products round to bf16, ours do not
    assert dense_out.losses.keys() == sparse_out.losses.keys()
    for key, value in dense_out.losses.items():
        close(sparse_out.losses[key].detach().float(), value.detach().float(), rtol)
    assert dense.keys() == grads.keys()
    for key, grad in dense.items():
        close(grads[key].float(), grad.float(), rtol)


def train(arch: str, fields: dict[str, Any], mode: str, steps: int) -> tuple[Any, Any]:
    """``steps`` steps through the core loop (after-step work: resampling, sorting)."""
    from sae_lens.training.sae_trainer import SAETrainer

    from tests.test_speed import core_loop, trainer_cfg

    sae = make_sae(arch, fields, mode)
    with torch.no_grad():
        if hasattr(sae, "_terms"):
            sae.b_enc[: D_SAE // 8] = -100.0  # dead latents: resampling happens
    trainer = SAETrainer(cfg=trainer_cfg(), sae=sae, data_provider=iter(()))
    loop = core_loop(trainer)
    torch.manual_seed(5)
    for _ in range(steps):
        loop.train_step()
    return sae, trainer


@pytest.mark.parametrize(
    ("arch", "fields"),
    [
        (
            "freq_ordered",
            {"sort_latents_every": 4, "resample_dead_every": 5, "prefix_coefficient": 1.0},
        ),
        ("temporal_consistency", {"resample_dead_every": 5}),
        ("tsae", {"k": 4}),
    ],
    ids=["freq_ordered", "temporal_consistency", "tsae"],
)
def test_training_on_either_path_gives_the_same_sae(arch: str, fields: dict[str, Any]) -> None:
    dense, dense_trainer = train(arch, fields, "dense", 12)
    ours, trainer = train(arch, fields, "sparse", 12)
    if "resample_dead_every" in fields:
        assert ours.n_resampled == dense.n_resampled > 0
    if "sort_latents_every" in fields:
        assert ours.n_sorts == dense.n_sorts == 3
    state, want = ours.state_dict(), dense.state_dict()
    for key, value in want.items():
        close(state[key].float(), value.float(), 1e-4)
    close(trainer.act_freq_scores, dense_trainer.act_freq_scores)


def test_a_sparse_trained_sae_saves_what_it_computed(tmp_path: Any) -> None:
    """Saved after sparse steps, the inference SAE computes the training SAE's dense output."""
    from sae_lens.saes.sae import SAE

    sae, _ = train("freq_ordered", {}, "sparse", 3)
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    x = torch.randn(ROWS, D_IN)
    sae.eval()
    with torch.no_grad():
        close(loaded(x), sae(x))
        assert torch.equal(loaded.encode(x), sae.encode(x))


def test_a_term_that_reads_dense_codes_gets_them_on_sparse_steps() -> None:
    """A third-party term without ``sparse_aware`` reads a dense, differentiable
    ``feature_acts``; its gradient is the dense step's."""
    from sae_lens_ext import hookimpl
    from sae_lens_ext.plugins import register_plugin
    from sae_lens_ext.training.loss_terms import LossTerm

    class Plugin:
        @hookimpl
        def register_loss_terms(self, register: Any) -> None:
            register(LossTerm("test_sparse_squares", lambda ctx: ctx.feature_acts.pow(2).sum()))

    register_plugin(Plugin(), "test_sparse_squares_plugin")
    fields = {"loss_terms": "test_sparse_squares=0.5"}
    x = torch.randn(ROWS, D_IN, generator=torch.Generator().manual_seed(1))
    _, dense = step_gradients(make_sae("freq_ordered", fields, "dense"), x, False)
    out, grads = step_gradients(make_sae("freq_ordered", fields, "sparse"), x, False)
    assert out.losses["test_sparse_squares_loss"] > 0 and out.metrics["sparse_step"] == 1.0
    for key, grad in dense.items():
        close(grads[key], grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["freq_ordered, prefix", "temporal_consistency", "tsae"])
def test_sparse_step_on_cuda_gives_the_dense_steps_gradients(name: str) -> None:
    arch, fields = STEPS[name]
    x = torch.randn(ROWS, D_IN, generator=torch.Generator().manual_seed(1)).cuda()
    _, dense = step_gradients(make_sae(arch, fields, "dense").cuda(), x, False)
    _, grads = step_gradients(make_sae(arch, fields, "sparse").cuda(), x, False)
    for key, grad in dense.items():
        close(grads[key].cpu(), grad.cpu(), 1e-4)


# --- choosing the path ------------------------------------------------------------------------


def test_auto_switches_on_the_measured_density_without_reading_the_device() -> None:
    switch = sparse.SparseStepSwitch("auto", threshold=0.1, check_every=2, min_product=0)
    assert switch.choose() is False  # nothing measured yet
    switch.observe_dense(torch.ones(4, 10), step=0)  # density 1: stays dense
    assert switch.choose() is False
    low = torch.zeros(4, 10)
    low[0, 0] = 1.0  # density 0.025
    switch.observe_dense(low, step=1)  # not a measuring step
    assert switch.choose() is False
    switch.observe_dense(low, step=2)
    assert switch.choose() is True
    assert switch.metrics(True) == {"sparse_step": 1.0, "code_density": 0.025}
    codes = random_codes(4, 10, 1)  # density 0.1: inside the hysteresis band
    switch.observe_codes(codes)
    assert switch.choose() is True
    switch.observe_codes(random_codes(4, 10, 2))  # density 0.2: back to dense
    assert switch.choose() is False and switch.switches == 2


def test_forced_paths_and_options_that_need_the_dense_step() -> None:
    assert sparse.SparseStepSwitch("sparse").choose() is True
    assert sparse.SparseStepSwitch("dense").choose() is False
    with pytest.raises(ValueError, match="sparse_step must be one of auto, dense, sparse"):
        get_sae_training_class("freq_ordered")[1](d_in=4, d_sae=8, sparse_step="fast")
    x = torch.randn(ROWS, D_IN)
    for arch, fields in [
        ("freq_ordered", {"layer_norm": True}),
        ("temporal_consistency", {"activation_fn": "gelu"}),
    ]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sae = make_sae(arch, fields, "sparse")
            out1, _ = step_gradients(sae, x, False)
            out2, _ = step_gradients(sae, x, False)
        messages = [
            str(w.message) for w in caught if "every training step is dense" in str(w.message)
        ]
        assert len(messages) == 1, messages
        assert out1.metrics["sparse_step"] == out2.metrics["sparse_step"] == 0.0


def test_a_hooked_sae_takes_the_dense_step() -> None:
    sae = make_sae("freq_ordered", {}, "sparse")
    seen: list[torch.Tensor] = []
    sae.hook_sae_acts_post.add_hook(lambda acts, hook: seen.append(acts))
    out, _ = step_gradients(sae, torch.randn(ROWS, D_IN), False)
    assert out.metrics["sparse_step"] == 0.0 and len(seen) == 1 and not seen[0].is_sparse


def test_auto_goes_sparse_once_codes_are_sparse_through_upstreams_trainer() -> None:
    from sae_lens.training.sae_trainer import SAETrainer

    from tests.test_speed import batches, trainer_cfg

    sae = make_sae("freq_ordered", {}, "auto")
    sae.sparse_switch.min_product = 0  # a test-sized step
    with torch.no_grad():
        sae.b_enc.fill_(-0.3)  # below 1 latent in 64 per row
    trainer = SAETrainer(cfg=trainer_cfg(), sae=sae, data_provider=iter(()))
    data = batches()
    paths = []
    for _ in range(3):
        out = trainer.step(next(data))
        trainer.n_training_steps += 1
        paths.append(out.metrics["sparse_step"])
    assert paths == [0.0, 1.0, 1.0]
    assert 0 < out.metrics["code_density"] < sparse.DENSITY_THRESHOLDS["cpu"]


def test_auto_says_once_when_sparse_codes_meet_an_option_that_needs_the_dense_step() -> None:
    switch = sparse.SparseStepSwitch(
        "auto", 0.1, 1, unsupported="layer_norm...", owner="X", min_product=0
    )
    low = torch.zeros(4, 10)
    low[0, 0] = 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for acts in (torch.ones(4, 10), low, low, low):
            assert switch.choose() is False
            switch.observe_dense(acts, step=0)
        assert switch.choose() is False
    assert [str(w.message) for w in caught] == [
        "X: every training step is dense (code density 2.50%): layer_norm..."
    ]


def test_batchtopk_on_the_cpu_picks_topks_entries_and_breaks_ties_by_position() -> None:
    """The CPU shortcut (entries above a sampled threshold) gives ``torch.topk``'s set where
    it is unique; at a tie on its boundary (bf16 products) it keeps every entry above the
    tied value and the first tied entries in row-major order; with fewer positive entries
    than ``k`` it lets ``torch.topk`` decide."""
    g = torch.Generator().manual_seed(0)
    count = 4 * 256
    unique = torch.randn(256, 1024, generator=g)
    tied = torch.randn(256, 1024, generator=g).bfloat16().float()
    few_positive = torch.randn(256, 1024, generator=g) - 4.0
    index = sparse._host_batch_topk(unique, count)
    assert index is not None
    assert set(index.tolist()) == set(torch.topk(unique.flatten(), count).indices.tolist())
    index = sparse._host_batch_topk(tied, count)
    assert index is not None and index.numel() == count
    flat = tied.flatten()
    boundary = flat[index].min()
    tied_at = (flat == boundary).nonzero().flatten()
    assert tied_at.numel() > (flat[index] == boundary).sum() > 0  # the case is a real tie
    want = torch.cat(
        [(flat > boundary).nonzero().flatten(), tied_at[: count - (flat > boundary).sum()]]
    )
    assert torch.equal(index.sort().values, want.sort().values)
    assert sparse._host_batch_topk(few_positive, count) is None
    for hidden in (unique, tied, few_positive):
        rows, cols = sparse.BatchTopK(4).select(hidden)
        picked = hidden.relu()[rows, cols]
        assert picked.numel() == count
        assert torch.equal(
            picked.sort().values, torch.topk(hidden.relu().flatten(), count).values.sort().values
        )


def test_batchtopk_called_densely_picks_what_select_picks_with_upstreams_gradient() -> None:
    """``BatchTopK(k)(hidden)`` (an SAE's ``get_activation_fn``): the entries ``select``
    picks, ties included, and upstream's module's output and gradient where none tie."""
    g = torch.Generator().manual_seed(1)
    for hidden in (torch.randn(64, 512, generator=g), torch.randn(64, 512, generator=g).bfloat16()):
        hidden.requires_grad_()
        acts = sparse.BatchTopK(3.5)(hidden)
        rows, cols = sparse.BatchTopK(3.5).select(hidden.detach())
        want = torch.zeros_like(hidden).index_put_((rows, cols), hidden.detach().relu()[rows, cols])
        assert torch.equal(acts.detach(), want)
    hidden = torch.randn(64, 512, generator=g, requires_grad=True)
    weights = torch.randn(64, 512, generator=g)
    ours = torch.autograd.grad((sparse.BatchTopK(3.5)(hidden) * weights).sum(), hidden)[0]
    theirs = torch.autograd.grad((UpstreamBatchTopK(3.5)(hidden) * weights).sum(), hidden)[0]
    assert torch.equal(ours, theirs)


def test_the_run_log_records_the_path_the_density_and_l0(tmp_path: Any) -> None:
    """Through ``sae-lens train``'s loop and logger: each record says which path the step
    took, the measured code density and the L0 (counted from the sparse codes)."""
    import json

    from sae_lens.training.sae_trainer import SAETrainer

    from sae_lens_ext.run.loop import TrainingLoop
    from sae_lens_ext.run.progress import RunLogger
    from tests.test_speed import batches, trainer_cfg

    log = tmp_path / "training_log.jsonl"
    for mode in ("dense", "sparse"):
        sae = make_sae("freq_ordered", {}, mode)
        trainer = SAETrainer(cfg=trainer_cfg(), sae=sae, data_provider=iter(()))
        logger = RunLogger(log, total_samples=10**9, batch_size=ROWS, log_every=1, mode="none")
        loop = TrainingLoop(trainer, batches(), logger=logger)
        for _ in range(2):
            loop.train_step()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["sparse_step"] for r in records] == [0.0, 0.0, 1.0, 1.0]
    assert all(0 < r["code_density"] < 1 for r in records[2:])
    for dense, sparse_record in zip(records[:2], records[2:], strict=True):
        assert sparse_record["l0"] == pytest.approx(dense["l0"])  # same SAE, same batches


def test_auto_keeps_small_steps_dense() -> None:
    """Below ``MIN_PRODUCT`` (rows x d_in x d_sae) the sparse step's fixed costs outweigh
    what it saves: auto stays dense there, however sparse the codes; ``"sparse"`` does not."""
    low = torch.zeros(32, 64)
    low[0, 0] = 1.0
    for mode, want in (("auto", False), ("sparse", True)):
        switch = sparse.SparseStepSwitch(mode, check_every=1, d_in=16)
        switch.observe_dense(low, step=0)
        assert switch.choose() is want
    big = sparse.SparseStepSwitch("auto", check_every=1, d_in=2**25 // (32 * 64))
    big.observe_dense(low, step=0)
    assert big.choose() is True


def test_auto_stays_dense_on_a_device_without_a_measured_threshold() -> None:
    switch = sparse.SparseStepSwitch("auto", check_every=1, d_in=2**25)
    low = torch.zeros(4, 100)
    low[0, 0] = 1.0
    switch.observe_dense(low, step=0)
    assert switch.choose() is True  # the CPU's threshold
    switch.device_type = "cuda"  # none measured: dense until gpu_speed.sh says otherwise
    assert switch.threshold is None and switch.choose() is False
