"""``sae-lens demo``: train any registered architecture on synthetic data with ground truth.

What is architecture-specific comes from the plugins: config defaults and data through
the ``demo_setup`` hook, extra metrics through ``evaluation_metrics``, figures through
``run_figures``. An architecture whose plugin implements none of them trains on SAE-Lens's
``SyntheticModel`` with upstream defaults and gets the generic metrics and figures.

Under ``torchrun`` (see :mod:`sae_lens_ext.training.distributed`) every rank trains on its block of
each global batch of ``--batch-size`` rows (``--data-streams``, :mod:`sae_lens_ext.data.streams`:
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
from sae_lens_ext.run.output import CHECKPOINTS_DIR, RunOutput, check_creatable
from sae_lens_ext.run.values import (
    NotANumber,
    check_assignments,
    coerce,
    field_types,
    number_kind,
    split_assignment,
)

DEMO_LR = 4e-3
DEFAULT_SAMPLES = 1_000_000
DEFAULT_OUTPUT = "sae-lens-demo"
SET_EXAMPLE = "FIELD=VALUE, e.g. --set l1_coefficient=2"
#: Trainer-config fields the demo sets from its own options (``--set`` refuses them).
TRAINER_OPTIONS = {
    "total_training_samples": "--samples",
    "train_batch_size_samples": "--batch-size",
    "lr": "--lr",
    "device": "--device",
    "n_checkpoints": "--n-checkpoints",
    "checkpoint_path": "--output",
    "save_final_checkpoint": "--output",
    "logger": "(none: the demo logs to training_log.jsonl)",
}


@dataclass
class DemoOptions:
    """The options of ``sae-lens demo`` (see ``sae-lens demo --help``) and their defaults:
    the one place for both (the command's flags and demo sweeps read them here)."""

    architecture: str | None = None
    output: str | None = None
    samples: int | None = None
    d_in: int = 64
    n_features: int = 256
    d_sae: int = 512
    batch_size: int = 1024
    lr: float | None = None
    seed: int = 0
    overrides: tuple[str, ...] = ()
    eval_samples: int = 100_000
    n_checkpoints: int = 0
    resume: bool = False
    overwrite: bool = False
    log_every: int | None = None
    progress: str = "auto"
    device: str = "cpu"
    threads: int = 1
    data_seed: int | None = None  # the ground truth's seed (default: ``seed``)
    data_streams: int = 0
    preset: str | None = None  # a named preset of the architecture (before ``overrides``)

    @property
    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed


#: The smallest value of each whole-number option of ``sae-lens demo`` (``lr``: above 0).
DEMO_MINIMUM = {
    "samples": 1,
    "d_in": 1,
    "n_features": 1,
    "d_sae": 1,
    "batch_size": 1,
    "eval_samples": 1,
    "n_checkpoints": 0,
    "threads": 0,
}


def demo_option_value(key: str, value: Any) -> Any:
    """``value`` of the demo option ``key`` as its flag takes it (numbers as Python reads
    them: ``1e6``, ``1e-3``); ``ValueError`` saying why it is not one."""
    kind = field_types(DemoOptions)[key]
    if value is None or number_kind(kind) is None:
        return value if value is None or isinstance(value, str) else str(value)
    number = coerce(value, kind)
    if key == "lr" and number <= 0:
        raise ValueError(f"{number} is not above 0")
    if key in DEMO_MINIMUM and number < DEMO_MINIMUM[key]:
        raise ValueError(f"{number} is below the smallest value, {DEMO_MINIMUM[key]}")
    return number


def demo(options: DemoOptions) -> int:
    """The body of ``sae-lens demo``."""
    check_assignments(options.overrides, "--set", SET_EXAMPLE)  # before the slow imports
    if options.output is not None or options.architecture is not None:
        check_output(options)  # before the slow imports
    t0 = time.perf_counter()
    demo_plan = plan(options)  # chooses the default architecture
    out = check_output(options)
    output = RunOutput(
        out, out / CHECKPOINTS_DIR, overwrite=options.overwrite, resume=options.resume,
        flag="--output", expected={
            "architecture": options.architecture, "d_in": options.d_in, "d_sae": options.d_sae
        },
    )  # fmt: skip
    output.check()
    from sae_lens_ext.training import distributed

    with distributed.process_group(options.device) as device:
        options.device = device
        return _train_and_report(options, demo_plan, output, t0)


def default_output(architecture: str) -> str:
    """``./sae-lens-demo-ARCHITECTURE``: one folder per architecture, so demos of several
    architectures run one after the other without ``-o``."""
    return f"{DEFAULT_OUTPUT}-{architecture}"


def check_output(options: DemoOptions) -> Path:
    """The output folder (``--output``, else :func:`default_output`), refused when it holds
    a trained SAE or cannot be created (cheap: no SAE-Lens import)."""
    options.output = options.output or default_output(str(options.architecture))
    out = Path(options.output)
    if not options.overwrite and holds_trained_sae(out):
        refuse_trained(out, "--output")
    check_creatable(out, "--output")
    return out


def _train_and_report(
    options: DemoOptions, demo_plan: DemoPlan, output: RunOutput, t0: float
) -> int:
    from sae_lens_ext.run.loop import seed_everything
    from sae_lens_ext.run.report import evaluate_and_save, print_results
    from sae_lens_ext.training import distributed

    out = output.folder
    seed_everything(options.seed)
    setup, samples = demo_plan.setup, demo_plan.samples
    sae_cfg = demo_plan.sae_config(options)
    data = make_data(setup, options, samples)
    batches = training_batches(data, sae_cfg, options)
    sae = training_classes(str(options.architecture))[0](sae_cfg).to(options.device)
    lr = options.lr or setup.lr or DEMO_LR
    with output.running():
        sae, trainer = train_demo(
            sae, batches, output, options, samples, lr, demo_plan.trainer_settings
        )
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
            "sae_config": demo_plan.settings,
            **(
                {"trainer_config": demo_plan.trainer_settings} if demo_plan.trainer_settings else {}
            ),
            "train_time_s": round(time.perf_counter() - t0, 2),
            **({"note": setup.note} if setup.note else {}),
        }
        eval_seed = options.resolved_data_seed + 1
        metrics = evaluate_and_save(
            sae, trainer, data, output, options.eval_samples, eval_seed, run_info
        )
    print_results(out, metrics)
    if setup.note:
        print(setup.note)
    return 0


@dataclass
class DemoPlan:
    """What ``sae-lens demo`` will train, checked before any data are made: the plugin's
    set-up, the training config class and its settings, the trainer settings ``--set``
    changes, and the training samples."""

    setup: Any
    cfg_cls: type[Any]
    samples: int
    settings: dict[str, Any]
    trainer_settings: dict[str, Any]

    def sae_config(self, options: DemoOptions) -> Any:
        """The SAE's training config; a setting it refuses is one line naming ``--set``."""
        try:
            return self.cfg_cls(
                d_in=options.d_in, d_sae=options.d_sae, device=options.device, **self.settings
            )
        except (TypeError, ValueError) as exc:
            raise fail(f"SAE config: {one_line(exc)} (change it with --set FIELD=VALUE)") from exc


def plan(options: DemoOptions) -> DemoPlan:
    """The architecture's demo set-up, config class, training samples and settings, with
    every check that needs no data (the SAE's config is built once to check it)."""
    import torch

    from sae_lens_ext.run.lm_config import check_device

    options.architecture = route_loss_terms(
        options.architecture or default_architecture(), options.overrides
    )
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
    settings, trainer_settings = demo_settings(setup, cfg_cls, steps, options.overrides, preset)
    demo_plan = DemoPlan(setup, cfg_cls, samples, settings, trainer_settings)
    demo_plan.sae_config(options)
    return demo_plan


def _preset_settings(architecture: str, name: str | None) -> dict[str, Any]:
    from sae_lens_ext.plugins import get_preset
    from sae_lens_ext.presets import PresetError

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


def route_loss_terms(architecture: str, overrides: tuple[str, ...]) -> str:
    """The loss-term twin of an SAE-Lens architecture when ``--set`` gives a loss-term
    setting it lacks (``--architecture standard --set loss_terms=t=0.1``), else itself."""
    training_classes(architecture)  # an unknown architecture is named first
    from sae_lens_ext.training.twins import route_to_twin

    return route_to_twin(architecture, {item.partition("=")[0].strip() for item in overrides})


def default_architecture() -> str:
    """What a plugin names as the demo's default (``default_demo_architecture``), else
    SAE-Lens's standard SAE."""
    from sae_lens_ext.plugins import call_first

    return call_first("default_demo_architecture") or "standard"


def demo_setup(architecture: str) -> Any:
    """The plugins' answer to ``demo_setup``, or the core's defaults."""
    from sae_lens_ext.data.synthetic import DemoSetup
    from sae_lens_ext.plugins import call_first

    return call_first("demo_setup", architecture=architecture) or DemoSetup()


def demo_settings(
    setup: Any,
    cfg_cls: type[Any],
    steps: int,
    overrides: tuple[str, ...],
    preset: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """SAE config fields (the plugin's demo defaults the config has, then the preset's
    settings, then ``--set``) and trainer settings (``--set`` of a field of upstream's
    ``SAETrainerConfig``)."""
    names = {f.name for f in fields(cfg_cls)}
    settings = {k: v for k, v in setup.sae_settings.items() if k in names}
    settings.update({k: round(f * steps) for k, f in setup.per_step_settings.items() if k in names})
    settings.update(preset or {})
    sae_overrides, trainer_settings = parse_overrides(overrides, cfg_cls)
    settings.update(sae_overrides)
    return settings, trainer_settings


def trainer_fields() -> dict[str, Any]:
    """Fields of upstream's ``SAETrainerConfig`` that ``--set`` may change, with their
    types (those the demo sets from its own options are left out: see
    :data:`TRAINER_OPTIONS`)."""
    from sae_lens.config import SAETrainerConfig

    types = field_types(SAETrainerConfig)
    return {k: v for k, v in types.items() if k not in TRAINER_OPTIONS}


def parse_overrides(
    items: tuple[str, ...], cfg_cls: type[Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set FIELD=VALUE`` as typed values: fields of the SAE training config, then of
    upstream's trainer config (``dead_feature_window``, ``lr_warm_up_steps``...). Values are
    YAML; numbers are read as Python reads them (:mod:`sae_lens_ext.run.values`)."""
    import yaml

    sae_types, trainer_types = field_types(cfg_cls), trainer_fields()
    defaults = {f.name: f.default for f in fields(cfg_cls)}
    sae: dict[str, Any] = {}
    trainer: dict[str, Any] = {}
    for item in items:
        key, raw = split_assignment(item, "--set", SET_EXAMPLE)
        if key in TRAINER_OPTIONS and key not in sae_types:
            raise fail(f"--set {key}: set by the demo's own option {TRAINER_OPTIONS[key]}")
        if key not in sae_types and key not in trainer_types:
            raise fail(
                f"--set {key}: not a field of {cfg_cls.__name__} or of upstream's "
                "SAETrainerConfig; "
                f"fields: {', '.join(sorted(sae_types))}; trainer: "
                f"{', '.join(sorted(trainer_types))}"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise fail(f"--set {item!r}: not a YAML value ({one_line(exc)})") from exc
        if key in sae_types:
            sae[key] = _typed(key, value, sae_types[key], defaults.get(key, MISSING))
        else:
            trainer[key] = _typed(key, value, trainer_types[key], MISSING)
    return sae, trainer


def _typed(key: str, value: Any, annotation: Any, default: Any) -> Any:
    """``value`` as the field's type: numbers as Python reads them; other values must
    have the default's type."""
    kind = number_kind(annotation) or (
        type(default) if isinstance(default, (int, float)) and not isinstance(default, bool)
        else None
    )  # fmt: skip
    if kind is not None and value is not None:
        try:
            return coerce(value, kind)
        except NotANumber:
            like = "" if default is MISSING else f" (like the default, {default!r})"
            name = "a float" if kind is float else "an integer"
            raise fail(f"--set {key}={value!r}: expected {name}{like}") from None
    if default is MISSING or default is None or isinstance(value, type(default)):
        return value
    raise fail(
        f"--set {key}={value!r}: expected a {type(default).__name__} "
        f"(like the default, {default!r})"
    )


def make_data(setup: Any, options: DemoOptions, samples: int) -> Any:
    from sae_lens_ext.data.synthetic import DemoDataOptions, SyntheticModelData

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

    from sae_lens_ext.data.streams import check_streams, stream_batches
    from sae_lens_ext.data.windows import BatchLayoutError, batch_window, validate_window_layout
    from sae_lens_ext.training import distributed

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
    sae: Any,
    batches: Any,
    output: RunOutput,
    options: DemoOptions,
    samples: int,
    lr: float,
    trainer_settings: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Upstream's trainer, driven by the core loop; returns the SAE and the trainer."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    from sae_lens_ext.data.windows import mark_layout_served
    from sae_lens_ext.run.loop import TrainingLoop
    from sae_lens_ext.run.progress import RunLogger, default_log_every
    from sae_lens_ext.training import distributed
    from sae_lens_ext.training.sae import make_trainer

    steps = samples // options.batch_size
    settings = {
        "lr_end": lr / 10,
        "lr_scheduler_name": "cosineannealing",
        "lr_warm_up_steps": steps // 20,
        "dead_feature_window": max(10, steps // 10),
        "feature_sampling_window": max(20, steps // 5),
        **(trainer_settings or {}),
    }
    trainer_cfg = SAETrainerConfig(
        total_training_samples=samples,
        train_batch_size_samples=options.batch_size,
        lr=lr,
        device=options.device,
        n_checkpoints=options.n_checkpoints,
        checkpoint_path=str(output.checkpoint_dir),
        logger=LoggingConfig(log_to_wandb=False),
        **settings,
    )
    trainer = make_trainer(trainer_cfg, sae, batches)
    mark_layout_served(sae)
    log_every = options.log_every or default_log_every(samples, options.batch_size)
    logger = (
        RunLogger(output.log_path, samples, options.batch_size, log_every, options.progress)
        if distributed.is_main()
        else None
    )
    loop = TrainingLoop(trainer, batches, logger=logger, check_every=log_every)
    if distributed.is_main():
        print(
            f"Training a {options.architecture} SAE (d_in {options.d_in}, d_sae "
            f"{options.d_sae}) on {samples:,} synthetic samples{parallel_note(options)}",
            file=sys.stderr,
        )
    return loop.run(output.resume_from), trainer


def parallel_note(options: DemoOptions) -> str:
    """`` (data-parallel: N processes, S data streams)`` under torchrun, else ``""``."""
    from sae_lens_ext.training import distributed

    world = distributed.world_size()
    if world == 1:
        return ""
    return f" (data-parallel: {world} processes, {options.data_streams or world} data streams)"
