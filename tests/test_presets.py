"""``freq_ordered``'s defaults (the prefix mode, warm-ups as fractions of the run the trainer
is built for, a said fallback where the SAE cannot learn it) and named presets (the
``register_presets`` hook; ``--preset`` in ``sae-lens train`` and ``demo``, ``preset:`` in
sweeps)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import sae_lens  # noqa: F401  (registers the plugins)
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer
from sae_lens_ext_plugins.freq_ordered.sae import (
    FreqOrderedTrainingSAE,
    FreqOrderedTrainingSAEConfig,
)
from sae_lens_ext_plugins.temporal_consistency.sae import (
    TemporalConsistencyTrainingSAE,
    TemporalConsistencyTrainingSAEConfig,
)

from sae_lens_ext.plugins import get_preset, presets_of
from sae_lens_ext.presets import Preset, PresetError
from sae_lens_ext.run.lm import describe_presets
from sae_lens_ext.training.loss_terms import LossTermSpec, parse_loss_terms
from sae_lens_ext.training.sae import FALLBACK_TRAINING_STEPS, make_trainer
from tests.helpers import REPO, TinyLM, run_cli_commands


def fo(**kw) -> FreqOrderedTrainingSAE:
    return FreqOrderedTrainingSAE(FreqOrderedTrainingSAEConfig(d_in=8, d_sae=32, **kw))


def trainer_cfg(steps: int, batch: int = 32) -> SAETrainerConfig:
    return SAETrainerConfig(
        total_training_samples=steps * batch,
        train_batch_size_samples=batch,
        lr_end=3e-4,
        logger=LoggingConfig(log_to_wandb=False),
    )


def warm_ups(trainer: SAETrainer) -> dict[str, float]:
    return {name: s.warm_up_steps for name, s in trainer.coefficient_schedulers.items()}


# --- the defaults -----------------------------------------------------------------------
def test_defaults_are_the_prefix_mode():
    cfg = FreqOrderedTrainingSAEConfig(d_in=8, d_sae=32)
    assert (cfg.prefix_coefficient, cfg.prefix_warm_up_steps, cfg.prefix_warm_up_fraction) == (
        1.0,
        None,
        1.0,
    )
    assert (cfg.l1_coefficient, cfg.ordering_coefficient, cfg.sort_latents_every) == (0.6, 0.3, 25)


def test_warm_ups_are_fractions_of_the_run_the_trainer_is_built_for():
    trainer = make_trainer(trainer_cfg(400), fo(ordering_warm_up_fraction=0.25), iter(()))
    assert trainer.sae.training_steps == 400
    assert warm_ups(trainer) == {"l1": 0, "frequency_ordering": 100, "prefix_reconstruction": 400}
    # steps, when given, win over the fraction
    trainer = make_trainer(trainer_cfg(400), fo(prefix_warm_up_steps=50), iter(()))
    assert warm_ups(trainer)["prefix_reconstruction"] == 50


def test_where_nothing_tells_the_runs_length_the_fallback_is_used_and_said():
    """Upstream's own runners build ``SAETrainer`` directly: the SAE cannot learn the run's
    length, takes the fraction of ``FALLBACK_TRAINING_STEPS`` and says so, once."""
    with pytest.warns(UserWarning, match=f"taken of {FALLBACK_TRAINING_STEPS} steps") as seen:
        trainer = SAETrainer(cfg=trainer_cfg(400), sae=fo(), data_provider=iter(()))
        trainer.sae.get_coefficients()
    assert len(seen) == 1
    assert warm_ups(trainer)["prefix_reconstruction"] == FALLBACK_TRAINING_STEPS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warm-ups in steps need no length: nothing to say
        SAETrainer(cfg=trainer_cfg(400), sae=fo(prefix_warm_up_steps=10), data_provider=iter(()))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"prefix_warm_up_fraction": 1.5}, "prefix_warm_up_fraction"),
        ({"ordering_warm_up_fraction": -0.1}, "ordering_warm_up_fraction"),
        ({"prefix_warm_up_steps": -1}, "prefix_warm_up_steps"),
        ({"ordering_warm_up_steps": -5}, "ordering_warm_up_steps"),
    ],
)
def test_bad_warm_ups_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FreqOrderedTrainingSAEConfig(d_in=8, d_sae=32, **kwargs)


def test_stacked_loss_terms_take_a_share_of_the_run():
    assert parse_loss_terms("a=1@50%, b=2@10") == [
        LossTermSpec("a", 1.0, 0, 0.5),
        LossTermSpec("b", 2.0, 10),
    ]
    for bad in ("a=1@150%", "a=1@x%"):
        with pytest.raises(ValueError, match="loss_terms"):
            parse_loss_terms(bad)
    sae = TemporalConsistencyTrainingSAE(
        TemporalConsistencyTrainingSAEConfig(
            d_in=8, d_sae=32, loss_terms="prefix_reconstruction=1@25%"
        )
    )
    trainer = make_trainer(trainer_cfg(400), sae, iter(()))
    assert warm_ups(trainer)["prefix_reconstruction"] == 100


# --- presets ----------------------------------------------------------------------------
def test_freq_ordered_presets_are_the_logs_cumulative_runs():
    presets = presets_of("freq_ordered")
    assert [f"log-run-{i}" for i in range(2, 10)] == [n for n in presets if n.startswith("log")]
    configs = {
        name: FreqOrderedTrainingSAEConfig(d_in=8, d_sae=32, **p.settings)  # every key a field
        for name, p in presets.items()
    }
    for i in range(2, 10):  # the log's runs know neither the sort nor the prefix term
        cfg = configs[f"log-run-{i}"]
        assert cfg.prefix_coefficient == 0 and cfg.sort_latents_every == 0
        assert cfg.l1_coefficient == 1.0
    assert configs["log-run-2"].ordering_coefficient == 0.3
    assert configs["log-run-2"].enabled_loss_terms()[0].warm_up_steps == 0
    ramp = configs["log-run-3"].enabled_loss_terms()[0]
    assert (ramp.coefficient, ramp.warm_up_fraction) == (0.5, 0.2)
    assert presets["log-run-6"].settings == presets["log-run-5"].settings  # clipping: built in
    last = configs["log-run-9"]
    assert last.resample_dead_every and last.adaptive_l1 and last.layer_norm
    assert last.skip_projection and last.attention and last.attention_window == 8
    assert configs["no-prefix"].prefix_coefficient == 0 and configs["no-prefix"].sort_latents_every


def test_the_docs_list_every_preset_with_its_measured_row():
    page = (REPO / "docs" / "freq-ordered.md").read_text()
    for preset in presets_of("freq_ordered").values():
        assert preset.measured, preset.name
        assert f"| `{preset.name}` | {preset.description} | {preset.measured} |" in page


def test_temporal_consistency_preset_is_the_tuned_contrastive_setting():
    preset = get_preset("temporal_consistency", "contrastive")
    cfg = TemporalConsistencyTrainingSAEConfig(d_in=8, d_sae=32, **preset.settings)
    assert [(s.name, s.coefficient) for s in cfg.enabled_loss_terms()] == [
        ("temporal_contrastive", 1.0)
    ]
    assert cfg.temporal_contrastive_fraction == 1.0


def test_preset_errors_name_the_fix():
    with pytest.raises(PresetError, match="preset of freq_ordered, not of standard; add --arch"):
        get_preset("standard", "log-run-5")
    with pytest.raises(PresetError, match="no such preset; its presets: log-run-2, log-run-3"):
        get_preset("freq_ordered", "log-run-10")
    with pytest.raises(ValueError, match="lower-case"):
        Preset("Log Run", "standard", {})
    with pytest.raises(ValueError, match="l1_coefficient is None"):
        Preset("x", "standard", {"l1_coefficient": None})
    assert describe_presets("standard") == ""
    listing = describe_presets("freq_ordered")
    assert "  log-run-5: log run 5:" in listing
    assert "--adaptive_l1 True" in listing.split("log-run-5")[1].split("log-run-6")[0]


def test_a_demo_sweep_variant_starts_from_its_preset(tmp_path: Path):
    from sae_lens_ext.run.sweep import load_sweep
    from sae_lens_ext.run.sweep_demo import demo_options

    file = tmp_path / "sweep.yaml"
    file.write_text(
        "base: {architecture: freq_ordered, samples: 4096}\n"
        "variants:\n"
        "  - {name: run5, preset: log-run-5, l1_coefficient: 2}\n"
    )
    options = demo_options(load_sweep(str(file)).variants[0], 10, "none")
    assert options.preset == "log-run-5" and options.overrides == ("l1_coefficient=2",)


@pytest.mark.e2e
def test_presets_in_train_and_demo(tiny_lm: TinyLM, tmp_path: Path):
    """``sae-lens demo --preset`` trains the preset (``--set`` wins, the run records both),
    a wrong preset is one line; ``sae-lens train --preset`` (and a sweep's ``preset:``)
    parse into the preset's config with the user's flags winning."""
    demo = ["demo", "--samples", "8192", "--eval-samples", "2048", "--d-sae", "64"]
    results = run_cli_commands(
        [
            [*demo, "--preset", "log-run-5", "--set", "l1_coefficient=2", "-o", "run5"],
            [*demo, "--preset", "log-run-10", "-o", "bad"],
            [*demo, "--architecture", "standard", "--preset", "log-run-5", "-o", "bad"],
        ],
        cwd=tmp_path,
    )
    assert results[0][0] == 0, results[0][2][-3000:]
    run = json.loads((tmp_path / "run5" / "metrics.json").read_text())
    assert run["preset"] == "log-run-5"
    assert run["sae_config"]["adaptive_l1"] is True and run["sae_config"]["l1_coefficient"] == 2
    assert results[1][0] == results[2][0] == 2
    assert results[1][2].strip().splitlines()[-1].endswith("its presets: log-run-2, log-run-3, "
                                                          "log-run-4, log-run-5, log-run-6, "
                                                          "log-run-7, log-run-8, log-run-9, "
                                                          "no-prefix")  # fmt: skip
    assert "add --architecture freq_ordered" in results[2][2]
    assert not (tmp_path / "bad").exists()

    from sae_lens_ext.errors import CliError
    from sae_lens_ext.run.lm import parse_config
    from tests.helpers import lm_runner_args

    args = lm_runner_args(tiny_lm, "freq_ordered", tmp_path / "lm")[2:]
    cfg = parse_config([*args, "--preset", "log-run-7", "--layer_norm", "False"], None)
    assert cfg.sae.adaptive_l1 and not cfg.sae.layer_norm and cfg.sae.prefix_coefficient == 0
    assert parse_config(args, None).sae.prefix_coefficient == 1.0  # the defaults
    standard = lm_runner_args(tiny_lm, "standard", tmp_path / "lm")[2:]
    with pytest.raises(CliError, match="preset of freq_ordered, not of standard; add --arch"):
        parse_config([*standard, "--preset", "log-run-7"], None)
