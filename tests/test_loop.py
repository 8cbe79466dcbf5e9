"""The core training loop: after-step work with the optimizer in hand, trainer state that
follows a latent permutation, guards, and the small pieces it relies on (in-process)."""

from __future__ import annotations

import pytest
import sae_lens  # noqa: F401  (registers plugin architectures)
import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_ext.run.loop import LockstepData, TrainingLoop
from sae_lens_ext.training.after_step import driver_of
from sae_lens_ext.training.loss_terms import resolve_option

D_IN, D_SAE, BATCH = 8, 32, 64


def make_loop(architecture: str, steps: int, data=None, lockstep=(), **cfg_kwargs):
    torch.manual_seed(0)
    sae_cls, cfg_cls = get_sae_training_class(architecture)
    sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **cfg_kwargs))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * BATCH,
        train_batch_size_samples=BATCH,
        lr=1e-3,
        lr_end=1e-4,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        device="cpu",
        n_checkpoints=0,
        checkpoint_path=None,
        dead_feature_window=2,
        feature_sampling_window=1000,
        logger=LoggingConfig(log_to_wandb=False),
    )
    data = data if data is not None else iter(lambda: torch.randn(BATCH, D_IN), None)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data)
    return TrainingLoop(trainer, data, lockstep=lockstep)


def test_a_sort_permutes_the_trainers_firing_counters():
    loop = make_loop("freq_ordered", steps=1, sort_latents_every=1, ordering_coefficient=0.0)
    loop.train_step()  # a sort is due after this step, and the loop ran it
    trainer, sae = loop.trainer, loop.sae
    assert sae.n_sorts == 1 and not sae._sort_due
    with torch.no_grad():
        sae.latent_frequency.copy_(torch.rand(D_SAE))
    trainer.act_freq_scores = torch.arange(D_SAE, dtype=torch.float32)
    trainer.n_forward_passes_since_fired = torch.arange(D_SAE, dtype=torch.float32) * 10
    sae._sort_due = True
    before = sae.latent_frequency.clone()
    loop.after_optimizer_step()
    perm = torch.argsort(-before, stable=True)
    assert torch.equal(trainer.act_freq_scores, perm.float())  # counters follow their latents
    assert torch.equal(trainer.n_forward_passes_since_fired, perm.float() * 10)
    assert torch.all(torch.diff(sae.latent_frequency) <= 0)


def test_the_loop_runs_resampling_itself_and_resets_those_optimizer_rows():
    loop = make_loop(
        "freq_ordered",
        steps=6,
        resample_dead_every=6,
        sort_latents_every=0,
    )
    sae = loop.sae
    assert driver_of(sae).by_loop  # the process-wide optimizer hook leaves this SAE alone
    with torch.no_grad():
        sae.b_enc[:4] = -1e4  # latents 0-3 never fire: dead after dead_feature_window
    for _ in range(6):  # dead (no firing for > 2 steps) when step 5 resamples
        loop.train_step()
    assert sae.n_resampled >= 4
    state = loop.trainer.optimizer.state[sae.W_dec]
    resampled = torch.arange(4)
    assert torch.all(state["exp_avg"][resampled] == 0)
    assert torch.all(state["exp_avg_sq"][resampled] == 0)


def test_after_step_work_without_an_optimizer_step_is_skipped_not_misapplied():
    _, cfg_cls = get_sae_training_class("freq_ordered")
    sae_cls, _ = get_sae_training_class("freq_ordered")
    sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, sort_latents_every=1))
    from sae_lens.saes.sae import TrainStepInput

    def forward(n):
        return sae.training_forward_pass(
            TrainStepInput(
                sae_in=torch.randn(BATCH, D_IN),
                coefficients={k: 0.1 for k in sae.get_coefficients()},
                dead_neuron_mask=None,
                n_training_steps=n,
                is_logging_step=False,
            )
        )

    forward(0)  # schedules a sort, to run after an optimizer step that never comes
    weights = sae.W_dec.detach().clone()
    with pytest.warns(RuntimeWarning, match="sort was skipped"):
        forward(1)
    assert sae.n_sorts == 0 and torch.equal(sae.W_dec.detach(), weights)


def test_an_sae_that_never_fires_stops_the_run_with_the_fix():
    loop = make_loop("freq_ordered", steps=5, max_silent_steps=3, sort_latents_every=0)
    assert loop.guard.max_silent_steps == 3  # the core base config's field
    with torch.no_grad():
        loop.sae.b_enc.fill_(-1e4)
    for _ in range(3):
        loop.train_step()
    with pytest.raises(
        RuntimeError, match=r"no latent has fired for 3 steps.*normalize_activations"
    ):
        loop.guard.check()


def test_saes_in_lockstep_train_exactly_as_each_trains_alone():
    """One stream, two architectures: each SAE ends as its own loop would train it on the
    same batches (one normalisation estimate, shared; each its own after-step work)."""
    batches = [torch.randn(BATCH, D_IN) * 3 + 1 for _ in range(3 + 6)]
    variants = [("standard", {}), ("freq_ordered", {"sort_latents_every": 2})]
    norm = {"normalize_activations": "expected_average_only_in"}

    def loop(variant, data, lockstep=()):
        made = make_loop(variant[0], 6, data, lockstep, **norm, **variant[1])
        made.cfg.n_batches_for_norm_estimate = 3
        return made

    alone = [loop(v, iter(batches)).run().state_dict() for v in variants]
    follower = loop(variants[1], LockstepData())
    lead = loop(variants[0], iter(batches), [follower])
    together = [lead.run().state_dict(), follower.finish().state_dict()]
    assert follower.trainer.n_training_steps == 6 and follower.sae.n_sorts == 3
    for one, other in zip(alone, together, strict=True):
        assert one.keys() == other.keys()
        for key in one:
            assert torch.equal(one[key], other[key]), key


def test_ctrl_c_stops_loops_in_lockstep_at_a_step_boundary():
    from sae_lens_ext.errors import TrainingInterrupted

    follower = make_loop("standard", 6, LockstepData())
    lead = make_loop("standard", 6, lockstep=[follower])

    def batches():
        for i in range(6):
            if i == 2:
                lead.interrupt.requested = True  # as the first Ctrl-C does
            yield torch.randn(BATCH, D_IN)

    lead.data = batches()
    with pytest.raises(TrainingInterrupted, match="after step 3: no checkpoint saved"):
        lead.run()
    assert lead.trainer.n_training_steps == 3 and follower.trainer.n_training_steps == 2


def test_loops_in_lockstep_keep_no_checkpoints():
    follower = make_loop("standard", 2, LockstepData())
    follower.cfg.checkpoint_path = "checkpoints"
    with pytest.raises(ValueError, match="lock-step keep no checkpoints"):
        make_loop("standard", 2, lockstep=[follower])
    with pytest.raises(RuntimeError, match="gets each batch from the loop that leads it"):
        follower.train_step()


def test_zero_steps_is_an_error():
    loop = make_loop("standard", steps=0)
    with pytest.raises(RuntimeError, match="trained 0 steps"):
        loop.run()


def test_non_finite_input_names_the_step_and_the_input():
    batches = [torch.randn(BATCH, D_IN) for _ in range(4)]
    batches[2][5, 1] = float("nan")
    loop = make_loop("standard", steps=4, data=iter(batches))
    with pytest.raises(FloatingPointError, match=r"training step 2: .*input activations"):
        loop.run()


@pytest.mark.parametrize(
    ("raw", "default", "expected"),
    [
        ("False", True, False),
        ("true", False, True),
        ("0", True, False),
        ("3", 1, 3),
        ("x", "s", "x"),
    ],
)
def test_option_values_take_the_defaults_type(raw, default, expected):
    assert resolve_option(object(), {"k": raw}, "k", default) == expected


def test_bad_option_values_name_the_key():
    with pytest.raises(ValueError, match="k='maybe' is not a boolean"):
        resolve_option(object(), {"k": "maybe"}, "k", True)
    with pytest.raises(ValueError, match="k='x' is not a valid int"):
        resolve_option(object(), {"k": "x"}, "k", 1)


def test_contrastive_term_honours_the_stride():
    from sae_lens_ext_plugins.temporal_consistency.losses import contrastive_penalty

    torch.manual_seed(0)
    f = torch.relu(torch.randn(4 * 6, 10))
    h = torch.nn.functional.normalize(f[:, :2].reshape(6, 4, 2), dim=-1)
    logits = torch.einsum("wk,vk->wv", h[:, 2], h[:, 0]) / 0.1  # pairs (t, t+2) for t = 0
    logits2 = torch.einsum("wk,vk->wv", h[:, 3], h[:, 1]) / 0.1
    target = torch.arange(6)
    expected = torch.nn.functional.cross_entropy(torch.cat([logits, logits2]), target.repeat(2))
    got = contrastive_penalty(f, 4, fraction=0.2, temperature=0.1, stride=2)
    assert torch.allclose(got, expected, atol=1e-6)


def test_ctrl_c_during_the_norm_estimate_stops_before_training():
    from sae_lens_ext.errors import TrainingInterrupted

    loop = make_loop("freq_ordered", steps=5, normalize_activations="expected_average_only_in")
    served = []

    def batches():
        while True:
            served.append(1)
            if len(served) == 3:
                loop.interrupt.requested = True  # as the SIGINT handler does
            yield torch.randn(BATCH, D_IN)

    loop.data = batches()
    with pytest.raises(TrainingInterrupted, match="interrupted after step 0: no checkpoint"):
        loop.run()
    assert len(served) == 3 and loop.trainer.n_training_steps == 0  # not 1000 batches later


def test_plain_progress_prints_on_a_time_basis(monkeypatch, capsys):
    from sae_lens_ext.run import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    logger = progress.RunLogger(None, total_samples=1000 * BATCH, batch_size=BATCH, mode="plain")
    loop = make_loop("standard", steps=1000)
    logger.start(0, 0)
    output = loop.trainer.step(torch.randn(BATCH, D_IN))
    for step in range(1, 8):  # 7 fast steps: print_every is 50, nothing due
        loop.trainer.n_training_steps = step
        clock[0] += 0.1
        logger.update(loop.trainer, output)
    assert capsys.readouterr().err == ""
    clock[0] += progress.PRINT_SECONDS  # a slow step: a line is due by time
    loop.trainer.n_training_steps = 8
    logger.update(loop.trainer, output)
    assert capsys.readouterr().err.startswith("step 8/1000 |")
