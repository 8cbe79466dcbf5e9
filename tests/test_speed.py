"""Speed properties of the training step: no host-device sync from our code outside logging
and periodic maintenance, ``compile_sae=True`` (upstream's flag) gives eager's results, and
the cheaper hand-written pieces compute what the plain formulas compute."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sae_lens  # noqa: F401  (registers the plugin architectures)
import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.training.sae_trainer import SAETrainer
from torch.overrides import TorchFunctionMode

from sae_lens_ext.data.windows import mark_layout_served
from sae_lens_ext.run.loop import TrainingLoop
from sae_lens_ext.run.progress import RunLogger
from sae_lens_ext.training.sae import make_trainer as upstream_trainer
from sae_lens_ext.training.sparse import codes as sparse_module  # where active_entries reads

REPO = Path(__file__).resolve().parents[1]
OURS = (str(REPO / "sae_lens_ext"), str(REPO / "plugins"))
D_IN, D_SAE, BATCH = 16, 64, 32

# name -> (architecture, config fields, resample period: steps that may sync)
CONFIGS: dict[str, tuple[str, dict[str, Any], int]] = {
    "freq_ordered": ("freq_ordered", {"sort_latents_every": 5}, 0),
    "freq_ordered, every option": (
        "freq_ordered",
        {
            "sort_latents_every": 5,
            "resample_dead_every": 7,
            "layer_norm": True,
            "skip_projection": True,
            "attention": True,
            "attention_window": 4,
            "adaptive_l1": True,
            "prefix_coefficient": 1.0,
            "prefix_warm_up_steps": 0,
        },
        7,
    ),
    "temporal_consistency": ("temporal_consistency", {"resample_dead_every": 7}, 7),
    "temporal_consistency, normalized": (
        "temporal_consistency",
        {"temporal_loss_form": "normalized", "temporal_stride": 2},
        0,
    ),
    "temporal_contrastive": (
        "temporal_consistency",
        {"temporal_coefficient": 0.0, "temporal_contrastive_coefficient": 0.1},
        0,
    ),
    "tsae": ("tsae", {"k": 4}, 0),
    # the sparse step (sae_lens_ext/training/sparse/), forced
    "freq_ordered, sparse step": (
        "freq_ordered",
        {"sort_latents_every": 5, "prefix_coefficient": 1.0, "sparse_step": "sparse"},
        0,
    ),
    "temporal_consistency, sparse step": (
        "temporal_consistency",
        {"resample_dead_every": 7, "sparse_step": "sparse"},
        7,
    ),
    "tsae, sparse step": ("tsae", {"k": 4, "sparse_step": "sparse"}, 0),
}
# a sparse step of ReLU codes reads its number of active codes to size its buffers (one
# integer; documented in sae_lens_ext/training/sparse/): allowed there, and only there
SPARSE_SIZE_READ = "active_entries"
SPARSE_RELU = {"freq_ordered, sparse step", "temporal_consistency, sparse step"}
# functions of ours that read a tensor which is on the CPU on every machine (no sync):
# prefix lengths are drawn from torch's global CPU generator, which checkpoints save; the
# sparse step's density count is read from a host copy once it has arrived (pinned on CUDA)
# (and reads made only when the tensor is a CPU one: tsae's "nothing is dead", BatchTopK's
# threshold and entries above it, gram's pairs); the contrastive term's sparse path runs on
# CPU tensors only
# (sparse_path_applies is False on an accelerator before it reads anything: test_temporal_unit)
HOST_ONLY = {
    "TorchUniform.random",
    "_DeviceCount.density",
    "_none_dead_on_cpu",
    "_host_batch_topk",
    "_entries_above",
    "_pairs_within",
    "_shared_latent_pairs",
    "sparse_path_applies",
    "_Codes.__init__",
    "_Codes.input_gradient",
    "_Offset.__init__",
    "_Offset.cosines",
    "_Offset.backward",
    "_join",
    "SparseWindowInfoNCE.forward",
    "SparseWindowInfoNCE.backward",
}
# torch functions that read a tensor's value on the host (a host-device sync on an
# accelerator) or whose output size depends on values (nonzero inside: a sync too)
SYNCING = {
    "item", "tolist", "numpy", "cpu", "nonzero", "argwhere", "equal", "allclose", "unique",
    "unique_consecutive", "masked_select", "bincount", "histc", "repeat_interleave",
    "__bool__", "__float__", "__int__", "__index__", "__format__", "__repr__",
}  # fmt: skip


class SyncRecorder(TorchFunctionMode):
    """Records calls that read a tensor's value on the host made directly from our code
    (``sae_lens_ext/``, ``plugins/``), with the training step they happened in."""

    def __init__(self, roots: tuple[str, ...] = OURS) -> None:
        super().__init__()
        self.roots = roots
        self.step = -1
        self.calls: list[tuple[int, str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        if name in SYNCING or _bool_index(name, args) or _to_host(name, args, kwargs):
            frame = sys._getframe(1)
            code = frame.f_code
            if code.co_filename.startswith(self.roots) and code.co_qualname not in HOST_ONLY:
                where = f"{Path(frame.f_code.co_filename).relative_to(REPO)}:{frame.f_lineno}"
                if code.co_qualname == SPARSE_SIZE_READ:
                    where = SPARSE_SIZE_READ
                self.calls.append((self.step, name, where))
        return func(*args, **(kwargs or {}))


def test_sync_recorder_sees_every_way_of_reading_a_value() -> None:
    """The recorder catches ``.item()``, ``float``/``int``/``bool``/``if``, ``.tolist()``,
    ``.nonzero()`` and boolean-mask indexing (each a device-to-host copy on CUDA) made
    from the files it watches, and nothing made elsewhere."""
    x = torch.arange(4.0)
    recorder = SyncRecorder(roots=(__file__,))
    with recorder:
        x.sum().item(), float(x[0]), int(x[1]), bool(x[2]), x.tolist(), x.nonzero()
        _ = x[x > 1]
        x.clone()[x > 2] = 0.0
        x.to("cpu"), x.to(torch.float64)  # the second is no host copy
        if x.any():
            pass
        torch.testing.assert_close(x, x)  # reads values too, but from torch's own files
    names = [name for _, name, _ in recorder.calls]
    for name in ("item", "__float__", "__int__", "tolist", "nonzero", "__getitem__"):
        assert name in names
    assert names.count("__setitem__") == names.count("to") == 1
    assert names.count("__bool__") == 2
    assert all(where.startswith("tests/test_speed.py") for _, _, where in recorder.calls)


def test_an_injected_sync_in_a_step_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step test can fail: the guard's check (one ``.tolist()``) run at every step
    instead of at logging steps is reported at every step."""
    from sae_lens_ext.training.after_step import TrainingGuard

    observe = TrainingGuard.observe

    def observe_and_check(self: TrainingGuard, *args: Any, **kwargs: Any) -> None:
        observe(self, *args, **kwargs)
        self.check()

    monkeypatch.setattr(TrainingGuard, "observe", observe_and_check)
    loop = core_loop(make_trainer("freq_ordered"))
    recorder = SyncRecorder()
    with recorder:
        for step in range(3):
            recorder.step = step
            loop.train_step()
    assert [(s, name) for s, name, _ in recorder.calls] == [(s, "tolist") for s in range(3)]
    assert all(where.startswith("sae_lens_ext/training/after_step.py") for _, _, where in recorder.calls)


def core_loop(trainer: SAETrainer, device: str = "cpu") -> TrainingLoop:
    """The core training loop (``sae-lens train``'s) over random batches, logging never."""
    logger = RunLogger(None, total_samples=10**9, batch_size=BATCH, log_every=10**6, mode="none")
    return TrainingLoop(trainer, batches(device), logger=logger)


def _to_host(name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> bool:
    """``tensor.to("cpu")`` (a copy to the host: a sync from an accelerator). A device
    object (``.to(other.device)``, device-following) is the CPU here, whatever it is on an
    accelerator: only the string names the host for sure."""
    if name != "to":
        return False
    return any(isinstance(t, str) and t == "cpu" for t in [*args[1:], *(kwargs or {}).values()])


def _bool_index(name: str, args: tuple[Any, ...]) -> bool:
    """Reading or writing through a boolean mask (its nonzero() is a sync)."""
    if name not in ("__getitem__", "__setitem__"):
        return False
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def trainer_cfg(device: str = "cpu", autocast: bool = False) -> SAETrainerConfig:
    return SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        total_training_samples=10**9, device=device, autocast=autocast, lr=3e-3, lr_end=3e-3,
        lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9, adam_beta2=0.999,
        lr_decay_steps=0, n_restart_cycles=1, train_batch_size_samples=BATCH,
        dead_feature_window=3, feature_sampling_window=1000,
        logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip


def make_trainer(name: str, device: str = "cpu", seed: int = 0) -> SAETrainer:
    arch, fields, _ = CONFIGS[name]
    sae_cls, cfg_cls = get_sae_training_class(arch)
    torch.manual_seed(seed)
    sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, device=device, **fields))
    mark_layout_served(sae)  # random rows stand for windows of consecutive positions
    with torch.no_grad():
        if hasattr(sae, "b_enc"):
            sae.b_enc[: D_SAE // 8] = -100.0  # dead latents: resampling must happen
    return upstream_trainer(trainer_cfg(device), sae, iter(()))  # tells it the run's length


def batches(device: str = "cpu") -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    while True:
        yield torch.randn(BATCH, D_IN, generator=g).to(device)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_host_sync_from_our_code_in_training_steps(name: str) -> None:
    """Through the core loop, steps 3-17 (none a logging step) read no tensor value on the
    host from our code, except every ``resample_dead_every`` steps (the dead set)."""
    trainer = make_trainer(name)
    loop = core_loop(trainer)
    for _ in range(3):  # step 0 logs; first steps create state (optimizer, RNG seeds)
        loop.train_step()
    recorder = SyncRecorder()
    with recorder:
        for step in range(3, 18):
            recorder.step = step
            loop.train_step()
    every = CONFIGS[name][2]
    sized = [c for c in recorder.calls if c[2] == SPARSE_SIZE_READ]
    if name in SPARSE_RELU:  # the sparse step ran at every step, with its one read
        assert [c[0] for c in sized] == list(range(3, 18))
    calls = [c for c in recorder.calls if c not in sized]
    unexpected = [c for c in calls if not every or (c[0] + 1) % every]
    assert unexpected == [], f"host syncs from our code in training steps: {unexpected}"
    if every:  # the resample steps do read the dead set (and are the only ones)
        assert {c[0] for c in calls} <= {s for s in range(3, 18) if (s + 1) % every == 0}
        assert trainer.sae.n_resampled > 0
    if name.startswith("freq_ordered"):
        assert trainer.sae.n_sorts >= 3  # sorts ran, without a sync


def test_upstream_runner_path_syncs_only_when_the_guard_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Driven by SAE-Lens's own ``SAETrainer.step`` (its runners), our code reads a tensor
    value only when the core's guard is checked, every ``GUARD_CHECK_EVERY`` steps."""
    from sae_lens_ext.training import after_step

    monkeypatch.setattr(after_step, "GUARD_CHECK_EVERY", 8)
    trainer = make_trainer("freq_ordered")
    data = batches()
    recorder = SyncRecorder()
    with recorder:
        for step in range(12):
            recorder.step = step
            trainer.step(next(data))
            trainer.n_training_steps += 1
    steps = {c[0] for c in recorder.calls}
    assert steps == {7}, recorder.calls
    assert trainer.sae.n_sorts > 0  # the sort ran through the optimizer hook, without a sync


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_cuda_sync_from_our_code(name: str) -> None:
    """On CUDA, ``torch.cuda.set_sync_debug_mode('warn')`` warns at every synchronizing
    call; none may come from our code in non-logging, non-resample steps."""
    trainer = make_trainer(name, device="cuda")
    loop = core_loop(trainer, "cuda")
    for _ in range(3):
        loop.train_step()
    every = CONFIGS[name][2]
    ours = []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        for step in range(3, 18):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                loop.train_step()
            if every and (step + 1) % every == 0:
                continue
            found = [str(w.filename) for w in caught if str(w.filename).startswith(OURS)]
            if name in SPARSE_RELU:  # the one documented read (sparse.active_entries)
                assert found.count(sparse_module.__file__) <= 1
                found = [f for f in found if f != sparse_module.__file__]
            ours += found
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert ours == []


def train_steps(trainer: SAETrainer, steps: int) -> list[dict[str, float]]:
    """``steps`` steps through the core loop; each step's losses."""
    loop = core_loop(trainer)
    out: list[dict[str, float]] = []
    trainer_step = trainer.step

    def step(batch: torch.Tensor) -> Any:
        output = trainer_step(batch)
        losses = {k: float(v.detach()) for k, v in output.losses.items()}
        out.append({**losses, "loss": float(output.loss.detach())})
        return output

    trainer.step = step  # type: ignore[method-assign]
    for _ in range(steps):
        loop.train_step()
    trainer.step = trainer_step  # type: ignore[method-assign]
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_compile_sae_gives_eager_results(name: str) -> None:
    """``compile_sae=True`` as upstream's runner applies it (``torch.compile`` of
    ``sae.training_forward_pass``; ``aot_eager`` here: the same graphs as inductor, without
    code generation) trains every architecture and loss term to eager's losses and weights,
    and compiles a bounded number of graphs (no recompilation at each step)."""
    from torch._dynamo.utils import counters

    eager = make_trainer(name)
    eager_losses = train_steps(eager, 7)
    compiled = make_trainer(name)
    torch._dynamo.reset()
    counters.clear()
    sae = compiled.sae
    sae.training_forward_pass = torch.compile(sae.training_forward_pass, backend="aot_eager")
    compiled_losses = train_steps(compiled, 7)
    for a, b in zip(eager_losses, compiled_losses, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    for (n, p), q in zip(eager.sae.named_parameters(), compiled.sae.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), n
    # a forced sparse step runs eagerly, in one piece (its entry counts vary): no graph
    least = 0 if CONFIGS[name][1].get("sparse_step") == "sparse" else 1
    assert least <= counters["stats"]["unique_graphs"] <= 3


def test_nonnegative_l1_equals_upstreams_penalty_and_gradient() -> None:
    """The one-pass L1 of ReLU codes has upstream's value and the same gradients in the
    pre-activations and the decoder (fp64); its gradient in the codes is a broadcast view."""
    from types import SimpleNamespace

    from sae_lens_ext.training.sae import decoder_weighted_sparsity

    torch.manual_seed(0)
    pre = torch.randn(12, 9, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    sae = SimpleNamespace(W_dec=W_dec)
    acts = torch.relu(pre)
    fast = decoder_weighted_sparsity(sae, acts, nonnegative=True)
    plain = (acts * W_dec.norm(dim=1)).norm(p=1, dim=-1).mean()  # upstream's formula
    assert torch.allclose(fast, plain)
    fast_grads = torch.autograd.grad(fast, (pre, W_dec), retain_graph=True)
    plain_grads = torch.autograd.grad(plain, (pre, W_dec))
    assert all(torch.allclose(a, b) for a, b in zip(fast_grads, plain_grads, strict=True))
    (grad_acts,) = torch.autograd.grad(decoder_weighted_sparsity(sae, acts, nonnegative=True), acts)
    assert grad_acts.stride(0) == 0  # broadcast over rows: no batch x d_sae tensor written
    lp = decoder_weighted_sparsity(sae, acts, p=2.0, nonnegative=True)  # p != 1: the formula
    assert torch.allclose(lp, (acts * W_dec.norm(dim=1)).norm(p=2, dim=-1).mean())


@pytest.mark.parametrize("window,stride", [(4, 1), (4, 2), (4, 3), (6, 2), (2, 1)])
def test_variation_gradient_layouts_agree(
    window: int, stride: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The eager (views written once) and compiled (two pads) forms of the total-variation
    gradient are the adjoint of ``f -> f[:, s:] - f[:, :-s]``."""
    from sae_lens_ext_plugins.temporal_consistency.losses import _shifted_difference

    d = torch.randn(3, window - stride, 5, dtype=torch.float64)
    f = torch.randn(3, window, 5, dtype=torch.float64, requires_grad=True)
    (reference,) = torch.autograd.grad((f[:, stride:] - f[:, :-stride]), f, d)
    assert torch.equal(_shifted_difference(d, window, stride), reference)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(_shifted_difference(d, window, stride), reference)
