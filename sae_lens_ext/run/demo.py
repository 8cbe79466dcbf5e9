"""``sae-lens demo``: train any registered architecture on synthetic data with ground truth.

What is architecture-specific comes from the plugins: config defaults and data through
the ``demo_setup`` hook, extra metrics through ``evaluation_metrics``, figures through
``run_figures``. An architecture whose plugin implements none of them trains on SAE-Lens's
``SyntheticModel`` with upstream defaults and gets the generic metrics and figures.

Under ``torchrun`` (see :mod:`sae_lens_ext.distributed`) every rank trains on its block of
each global batch of ``--batch-size`` rows (``--data-streams``, :mod:`sae_lens_ext.streams`:
the data are the same for any number of processes dividing it), and rank 0 alone
evaluates and writes the output.
"""

from __future__ import annotations

import sys
import time
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from sae_lens_ext.errors import fail, holds_trained_sae, one_line, refuse_trained
from sae_lens_ext.run.output import CHECKPOINTS_DIR, RunOutput

DEMO_LR = 4e-3
DEFAULT_SAMPLES = 1_000_000


@dataclass
class DemoOptions:
    """The options of ``sae-lens demo`` (see ``sae-lens demo --help``)."""

    architecture: str | None
    output: str
    samples: int | None
    d_in: int
    n_features: int
    d_sae: int
    batch_size: int
    lr: float | None
    seed: int
    overrides: tuple[str, ...]
    eval_samples: int
    n_checkpoints: int
    resume: bool
    overwrite: bool
    log_every: int
    progress: str
    device: str
    threads: int
    data_seed: int | None = None  # the ground truth's seed (default: ``seed``)
    data_streams: int = 0
    preset: str | None = None  # a named preset of the architecture (before ``overrides``)

    @property
    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed


def demo(options: DemoOptions) -> int:
    """The body of ``sae-lens demo``."""
    out = Path(options.output)
    if not options.overwrite and holds_trained_sae(out):  # before the slow imports
        refuse_trained(out, "--output")
    t0 = time.perf_counter()
    setup, cfg_cls, samples, settings = plan(options)
    output = RunOutput(
        out, out / CHECKPOINTS_DIR, overwrite=options.overwrite, resume=options.resume,
        flag="--output",
    )  # fmt: skip
    output.check()
    from sae_lens_ext import distributed

    with distributed.process_group(options.device) as device:
        options.device = device
        return _train_and_report(options, setup, cfg_cls, samples, settings, output, t0)


def _train_and_report(
    options: DemoOptions,
    setup: Any,
    cfg_cls: type[Any],
    samples: int,
    settings: dict[str, Any],
    output: RunOutput,
    t0: float,
) -> int:
    from sae_lens_ext import distributed
    from sae_lens_ext.run.loop import seed_everything
    from sae_lens_ext.run.report import evaluate_and_save, print_results

    out = output.folder
    seed_everything(options.seed)
    try:
        sae_cfg = cfg_cls(d_in=options.d_in, d_sae=options.d_sae, device=options.device, **settings)
    except (TypeError, ValueError) as exc:
        raise fail(f"SAE config: {one_line(exc)} (change it with --set FIELD=VALUE)") from exc
    data = make_data(setup, options, samples)
    batches = training_batches(data, sae_cfg, options)
    sae = training_classes(options.architecture)[0](sae_cfg).to(options.device)
    lr = options.lr or setup.lr or DEMO_LR
    with output.running():
        sae, trainer = train_demo(sae, batches, output, options, samples, lr)
        if not distributed.is_main():
            return 0  # rank 0 evaluates and writes
        run_info = {
            "architecture": options.architecture,
            **{k: getattr(options, k) for k in ("d_in", "d_sae", "n_features", "seed")},
            "data_seed": options.resolved_data_seed,
            "training_samples": trainer.n_training_samples,
            "training_steps": trainer.n_training_steps,
            "lr": lr,
            "resampled_latents": getattr(sae, "n_resampled", 0),
            "processes": distributed.world_size(),
            "data_streams": options.data_streams or distributed.world_size(),
            "preset": options.preset,
            "sae_config": settings,
            "train_time_s": round(time.perf_counter() - t0, 2),
        }
        eval_seed = options.resolved_data_seed + 1
        metrics = evaluate_and_save(
            sae, trainer, data, output, options.eval_samples, eval_seed, run_info
        )
    print_results(out, metrics)
    return 0


def plan(options: DemoOptions) -> tuple[Any, type[Any], int, dict[str, Any]]:
    """The architecture's demo set-up, config class, training samples and config settings,
    with every check that needs no data."""
    import torch

    from sae_lens_ext.run.lm_config import check_device

    options.architecture = options.architecture or default_architecture()
    _, cfg_cls = training_classes(options.architecture)
    check_device("device", options.device)
    if options.threads:
        torch.set_num_threads(options.threads)
    setup = demo_setup(options.architecture)
    samples = options.samples or setup.samples or DEFAULT_SAMPLES
    steps = samples // options.batch_size
    if steps < 1:
        raise fail(
            f"--samples {samples} is less than one batch (--batch-size {options.batch_size}); "
            f"give --samples {options.batch_size} or more"
        )
    preset = _preset_settings(options.architecture, options.preset)
    return setup, cfg_cls, samples, demo_settings(setup, cfg_cls, steps, options.overrides, preset)


def _preset_settings(architecture: str, name: str | None) -> dict[str, Any]:
    from sae_lens_ext.presets import PresetError, get_preset

    if name is None:
        return {}
    try:
        return dict(get_preset(architecture, name).settings)
    except PresetError as exc:
        raise fail(str(exc)) from exc


def training_classes(architecture: str) -> tuple[Any, Any]:
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        raise fail(
            f"unknown --architecture {architecture!r}; registered: "
            f"{', '.join(sorted(SAE_TRAINING_CLASS_REGISTRY))}"
        )
    return SAE_TRAINING_CLASS_REGISTRY[architecture]


def default_architecture() -> str:
    """What a plugin names as the demo's default (``default_demo_architecture``), else
    SAE-Lens's standard SAE."""
    from sae_lens_ext.plugins import load_plugins

    return load_plugins().hook.default_demo_architecture() or "standard"


def demo_setup(architecture: str) -> Any:
    """The plugins' answer to ``demo_setup``, or the core's defaults."""
    from sae_lens_ext.plugins import load_plugins
    from sae_lens_ext.synthetic import DemoSetup

    return load_plugins().hook.demo_setup(architecture=architecture) or DemoSetup()


def demo_settings(
    setup: Any,
    cfg_cls: type[Any],
    steps: int,
    overrides: tuple[str, ...],
    preset: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Config fields: the plugin's demo defaults (those the config has), then the preset's
    settings, then ``--set``."""
    names = {f.name for f in fields(cfg_cls)}
    settings = {k: v for k, v in setup.sae_settings.items() if k in names}
    settings.update({k: round(f * steps) for k, f in setup.per_step_settings.items() if k in names})
    settings.update(preset or {})
    settings.update(parse_overrides(overrides, cfg_cls))
    return settings


def parse_overrides(items: tuple[str, ...], cfg_cls: type[Any]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` as typed values (YAML scalars checked against the field's default)."""
    import yaml

    by_name = {f.name: f for f in fields(cfg_cls)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise fail(f"--set {item!r}: expected FIELD=VALUE, e.g. --set l1_coefficient=2")
        if key not in by_name:
            raise fail(
                f"--set {key}: not a field of {cfg_cls.__name__}; fields: {', '.join(sorted(by_name))}"
            )
        value = yaml.safe_load(raw) if raw.strip() else ""
        out[key] = _typed(key, value, by_name[key].default)
    return out


def _typed(key: str, value: Any, default: Any) -> Any:
    if default is MISSING or default is None or isinstance(value, type(default)):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise fail(
        f"--set {key}={value!r}: expected a {type(default).__name__} "
        f"(like the default, {default!r})"
    )


def make_data(setup: Any, options: DemoOptions, samples: int) -> Any:
    from sae_lens_ext.synthetic import DemoDataOptions, SyntheticModelData

    data_options = DemoDataOptions(
        n_features=options.n_features,
        d_in=options.d_in,
        seed=options.resolved_data_seed,
        samples=samples,
        device=options.device,
    )
    return (setup.data or SyntheticModelData.create)(data_options)


def training_batches(data: Any, sae_cfg: Any, options: DemoOptions) -> Any:
    """This process's block of each batch, in whole windows of the SAE's batch window:
    stream ``s`` of ``--data-streams`` is ``data.training_batches(rows, window, seed + s)``."""
    import torch

    from sae_lens_ext import distributed
    from sae_lens_ext.streams import check_streams, stream_batches
    from sae_lens_ext.windows import BatchLayoutError, batch_window, validate_window_layout

    window = batch_window(sae_cfg)
    n_streams = options.data_streams or distributed.world_size()
    device = torch.device(options.device)

    def make_stream(s: int, rows: int) -> Any:
        return data.training_batches(rows, window, options.seed + s)

    try:
        validate_window_layout(window, batch_size=options.batch_size, batch_setting="--batch-size")
        check_streams(
            options.batch_size, n_streams, distributed.world_size(), window,
            batch_setting="--batch-size",
        )  # fmt: skip
        return stream_batches(
            make_stream,
            options.batch_size,
            n_streams,
            seed=options.seed,
            cuda_device=device if device.type == "cuda" else None,
        )
    except BatchLayoutError as exc:
        raise fail(str(exc)) from exc


def train_demo(
    sae: Any, batches: Any, output: RunOutput, options: DemoOptions, samples: int, lr: float
) -> tuple[Any, Any]:
    """Upstream's trainer, driven by the core loop; returns the SAE and the trainer."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    from sae_lens_ext import distributed
    from sae_lens_ext.run.loop import TrainingLoop
    from sae_lens_ext.run.progress import RunLogger
    from sae_lens_ext.training import make_trainer
    from sae_lens_ext.windows import mark_layout_served

    steps = samples // options.batch_size
    trainer_cfg = SAETrainerConfig(
        total_training_samples=samples,
        train_batch_size_samples=options.batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=steps // 20,
        device=options.device,
        n_checkpoints=options.n_checkpoints,
        checkpoint_path=str(output.checkpoint_dir),
        dead_feature_window=max(10, steps // 10),
        feature_sampling_window=max(20, steps // 5),
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = make_trainer(trainer_cfg, sae, batches)
    mark_layout_served(sae)
    logger = (
        RunLogger(output.log_path, samples, options.batch_size, options.log_every, options.progress)
        if distributed.is_main()
        else None
    )
    loop = TrainingLoop(trainer, batches, logger=logger, check_every=options.log_every)
    if distributed.is_main():
        print(
            f"Training a {options.architecture} SAE (d_in {options.d_in}, d_sae "
            f"{options.d_sae}) on {samples:,} synthetic samples{parallel_note(options)}",
            file=sys.stderr,
        )
    return loop.run(output.resume_from), trainer


def parallel_note(options: DemoOptions) -> str:
    """`` (data-parallel: N processes, S data streams)`` under torchrun, else ``""``."""
    from sae_lens_ext import distributed

    world = distributed.world_size()
    if world == 1:
        return ""
    return f" (data-parallel: {world} processes, {options.data_streams or world} data streams)"
