"""``sae-lens train``: upstream's language-model runner, built through its constructor and
trained by the core's :class:`~sae_lens_ext.run.loop.TrainingLoop`.

Data (:func:`training_data`): in one process with one data stream, upstream's
``ActivationsStore`` as upstream's runner uses it (or, for a window architecture, whole
windows from it). With ``--data-streams S`` > 1, under ``torchrun``, or with cached
activations, each global batch is made of ``S`` streams (:mod:`sae_lens_ext.data.streams`):
stream ``s`` reads shard ``s`` of the token dataset (its own ``ActivationsStore``) or of
the cached rows (:mod:`sae_lens_ext.data.cached`), and each rank serves its share of them.
Cached activations need neither the language model nor a token dataset
(:class:`CachedActivationsRunner`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from typing_extensions import override

from sae_lens_ext.errors import fail, one_line
from sae_lens_ext.run import lm_config as checks
from sae_lens_ext.run.output import METRICS_FILENAME, RunOutput, write_json


def train(
    *,
    config_file: str | None,
    args: list[str],
    resume: bool,
    overwrite: bool,
    log_every: int | None,
    progress: str,
    help_options: bool,
    data_streams: int = 0,
    preset: str | None = None,
) -> int:
    """The body of ``sae-lens train`` (see ``sae-lens train --help``)."""
    if config_file is not None:
        args = checks.options_to_args(checks.config_file_options(config_file)) + args
    if preset is not None:  # after a --config file's preset: the command line wins
        args = [*args, "--preset", preset]
    if not help_options:
        checks.precheck(args, overwrite=overwrite)  # before SAE-Lens's slow import
    checks.check_architecture(args)
    if help_options:
        return print_help_options(args)
    if not args:
        raise fail("no options given; see 'sae-lens train --help' for an example")
    cfg = parse_config(args, config_file, data_streams)
    output = RunOutput(
        Path(cfg.output_path),
        _checkpoint_dir(cfg),
        overwrite=overwrite,
        resume=resume,
        expected={
            "architecture": cfg.sae.architecture(),
            "d_in": cfg.sae.d_in,
            "d_sae": cfg.sae.d_sae,
        },
    )
    output.check()
    return run_lm(cfg, output, log_every=log_every, progress=progress, data_streams=data_streams)


def print_help_options(args: list[str]) -> int:
    """Upstream's option list for ``--architecture``, then the architecture's presets."""
    code = checks.print_upstream_help(without_preset(args)[1])
    listing = describe_presets(checks.last_flag(args, "architecture", "standard"))
    print(f"\n{listing}" if listing else "\nNo presets registered for this architecture.")
    return code


def describe_presets(architecture: str) -> str:
    """A listing of ``architecture``'s presets with their flags ("" if it has none)."""
    from sae_lens_ext.plugins import presets_of

    own = presets_of(architecture)
    if not own:
        return ""
    lines = [f"Presets of {architecture} (--preset NAME; your own flags win):"]
    for preset in own.values():
        lines.append(f"  {preset.name}: {preset.description}")
        lines.append(f"      flags: {' '.join(preset.flags())}")
        if preset.measured:
            lines.append(f"      measured: {preset.measured}")
    return "\n".join(lines)


def without_preset(args: list[str]) -> tuple[str | None, list[str]]:
    """The last ``--preset NAME`` of ``args`` (from the command line, a ``--config`` file
    or a sweep variant), and the other arguments."""
    name, rest, i = None, [], 0
    while i < len(args):
        if args[i] == "--preset" and i + 1 < len(args):
            name, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--preset="):
            name = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return name, rest


def apply_preset(args: list[str]) -> list[str]:
    """``args`` with a ``--preset NAME`` replaced by the preset's flags, put first so that
    every flag given wins."""
    from sae_lens_ext.plugins import get_preset
    from sae_lens_ext.presets import PresetError

    name, rest = without_preset(args)
    if name is None:
        return rest
    try:
        preset = get_preset(checks.last_flag(rest, "architecture", "standard"), name)
    except PresetError as exc:
        raise fail(str(exc)) from exc
    return [*preset.flags(), *rest]


def parse_config(args: list[str], config_file: str | None, data_streams: int = 0) -> Any:
    """Upstream's runner config from the flags, with every check that needs no model."""
    from sae_lens_ext.data.streams import check_streams
    from sae_lens_ext.data.windows import BatchLayoutError, batch_window, validate_window_layout
    from sae_lens_ext.training import distributed

    args = apply_preset(args)
    checks.check_context_flag(args)
    cfg = checks.parse_upstream(["--log_to_wandb", "False", *args], config_file)
    if cfg.output_path is None or str(cfg.output_path) == "None":
        raise fail("--output_path is required (the folder the trained SAE is written to)")
    given = checks.flag_values(args, "checkpoint_path")
    if given:  # upstream appends a random id; use the path as given so --resume finds it
        cfg.checkpoint_path = None if given[-1] == "None" else given[-1]
    else:
        cfg.checkpoint_path = str(Path(cfg.output_path) / "checkpoints")
    checks.check_numbers(cfg)
    checks.check_devices(cfg)
    checks.check_paths(cfg)
    window = batch_window(cfg.sae)
    n_streams = data_streams or distributed.launched_world_size()
    try:
        validate_window_layout(
            window,
            batch_size=cfg.train_batch_size_tokens,
            context_size=_sliced_context(cfg),
            exclude_special_tokens=cfg.exclude_special_tokens,
        )
        check_streams(
            cfg.train_batch_size_tokens, n_streams, distributed.launched_world_size(), window
        )
    except BatchLayoutError as exc:
        raise fail(str(exc)) from exc
    checks.fit_buffer(cfg, args, window)
    checks.fit_norm_estimate(cfg, args)
    if cfg.use_cached_activations:
        check_cache(cfg, window, n_streams)
    return cfg


def check_cache(cfg: Any, window: int, n_streams: int) -> None:
    """The cached activations fit the run (hook, width, context, window, buffer)."""
    from sae_lens_ext.data.cached import CacheLayoutError, open_cache, validate_cache
    from sae_lens_ext.data.windows import BatchLayoutError

    if not cfg.cached_activations_path:
        raise fail("--use_cached_activations True needs --cached_activations_path DIR")
    try:
        _, layout = open_cache(cfg.cached_activations_path, cfg.hook_name)
        validate_cache(
            layout,
            d_in=cfg.sae.d_in,
            context_size=cfg.context_size,
            window=window,
            batch_size=cfg.train_batch_size_tokens,
            n_streams=n_streams,
            rows_per_read=cfg.store_batch_size_prompts,
            n_reads_in_buffer=cfg.n_batches_in_buffer,
        )
    except (CacheLayoutError, BatchLayoutError) as exc:
        raise fail(str(exc)) from exc


def _checkpoint_dir(cfg: Any) -> Path | None:
    return Path(cfg.checkpoint_path) if cfg.checkpoint_path else None


def _sliced_context(cfg: Any) -> int:
    return len(range(cfg.context_size)[slice(*cfg.seqpos_slice)])


@contextlib.contextmanager
def _quiet_override_warning() -> Iterator[None]:
    """Upstream warns that an ``override_model`` makes a run irreproducible from its
    config; ours is the model the config names, loaded first so errors name the setting."""

    def keep(record: logging.LogRecord) -> bool:
        return "override" not in record.getMessage()

    log = logging.getLogger("sae_lens")
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def load_model(cfg: Any) -> Any:
    """The model the config names, with one-line errors naming the setting."""
    from sae_lens.load_model import load_model as upstream_load_model

    try:
        return upstream_load_model(
            cfg.model_class_name,
            cfg.model_name,
            device=cfg.llm_device,
            model_from_pretrained_kwargs=cfg.model_from_pretrained_kwargs,
            hook_names=[cfg.hook_name],
        )
    except Exception as exc:
        if "hook_names not found" in str(exc):
            raise fail(
                f"--hook_name {cfg.hook_name}: no such module in {cfg.model_name}; give a "
                "module name such as transformer.h.0 (or a HookedTransformer hook name)"
            ) from exc
        raise checks.hub_error(
            "model_name",
            cfg.model_name,
            exc,
            "--model_class_name AutoModelForCausalLM --model_name ./model-dir",
        ) from exc


def build_runner(cfg: Any) -> Any:
    """Upstream's ``LanguageModelSAETrainingRunner``, through its public constructor (for
    cached activations: :func:`cached_activations_runner`)."""
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    if cfg.from_pretrained_path is not None and not Path(cfg.from_pretrained_path).exists():
        raise fail(f"--from_pretrained_path {cfg.from_pretrained_path}: no such folder")
    if cfg.use_cached_activations:
        return cached_activations_runner(cfg)
    model = load_model(cfg)
    check_context(cfg, model)
    try:
        with _quiet_override_warning():
            return LanguageModelSAETrainingRunner(cfg, override_model=model)
    except Exception as exc:
        raise checks.hub_error(
            "dataset_path", cfg.dataset_path, exc, "--dataset_path ./data-dir --streaming False"
        ) from exc


def cached_activations_runner(cfg: Any) -> Any:
    """Upstream's runner for a run on cached activations: its SAE construction, metadata,
    SAE compilation and final save, without the language model and token dataset its
    constructor loads (its activation store demands a ``dataset_path`` even when it reads
    a cache; here the data come from :mod:`sae_lens_ext.data.cached`, and the wandb evaluator,
    which runs the model, is off)."""
    from sae_lens.constants import RUNNER_CFG_FILENAME
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

    class CachedActivationsRunner(LanguageModelSAETrainingRunner):
        def __init__(self, cfg: Any) -> None:  # no super().__init__: no model, no store
            # no model, store or evaluator: a cached-activation run reads neither (internals.md)
            self.cfg, self.model, self.activations_store, self.evaluator = cfg, None, None, None  # type: ignore[assignment]
            if cfg.from_pretrained_path is not None:
                self.sae = TrainingSAE.load_from_disk(cfg.from_pretrained_path, cfg.device)
            else:
                sae_cfg = TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict())
                self.sae = TrainingSAE.from_dict(sae_cfg.to_dict())
            self.sae.to(cfg.device)

        @override
        def save_checkpoint(self, checkpoint_path: Path | None) -> None:
            if checkpoint_path is not None:  # the data position is in the loop's state
                (checkpoint_path / RUNNER_CFG_FILENAME).write_text(json.dumps(self.cfg.to_dict()))

    return CachedActivationsRunner(cfg)


#: Runner settings that name local files: recorded as absolute paths.
PATH_SETTINGS = ("model_name", "dataset_path", "cached_activations_path", "from_pretrained_path")


def record_inputs(runner: Any) -> None:
    """What a run folder records about its inputs (``runner_cfg.json``, the SAE's
    metadata): local model, dataset and cache paths made absolute, so that ``sae-lens
    evaluate`` works from any directory and after the folder moves; then upstream's
    metadata. Called once they were loaded (error messages name the paths as typed)."""
    cfg = runner.cfg
    for name in PATH_SETTINGS:
        value = getattr(cfg, name, None)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            setattr(cfg, name, os.path.abspath(Path(value).expanduser()))
    runner._set_sae_metadata()  # private upstream name: see docs/internals.md


def check_context(cfg: Any, model: Any) -> None:
    """Refuse a context longer than the model's positions."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is None:
        config = getattr(getattr(model, "model", None), "config", None)
        n_ctx = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
    if isinstance(n_ctx, int) and cfg.context_size > n_ctx:
        raise fail(
            f"--context_size {cfg.context_size} is longer than {cfg.model_name} can read "
            f"({n_ctx} positions); set --context_size {n_ctx} or less"
        )


def check_d_in(runner: Any) -> None:
    """Compare ``--d_in`` with the width of the hook, on one context of token 0."""
    import torch
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    cfg, store = runner.cfg, runner.activations_store
    if cfg.use_cached_activations:
        return
    tokens = torch.zeros((1, cfg.context_size), dtype=torch.long, device=cfg.llm_device)
    with torch.no_grad():
        cache = runner.model.run_with_cache(
            tokens,
            names_filter=[cfg.hook_name],
            prepend_bos=False,
            stop_at_layer=extract_stop_at_layer_from_tlens_hook_name(cfg.hook_name),
            **store.model_kwargs,
        )[1]
    if cfg.hook_name not in cache:
        raise fail(f"--hook_name {cfg.hook_name}: the model has no such hook")
    acts = cache[cfg.hook_name]
    if cfg.hook_head_index is not None:
        acts = acts[:, :, cfg.hook_head_index]
    width = int(acts[0, 0].numel())
    if width != cfg.sae.d_in:
        raise fail(
            f"--d_in {cfg.sae.d_in} does not match hook {cfg.hook_name} of "
            f"{cfg.model_name} (width {width}); set --d_in {width}"
        )


def training_data(runner: Any, n_streams: int) -> Any:
    """This process's training batches (see the module docstring); their ``state_dict``
    restores their position exactly on ``--resume``."""
    import torch

    from sae_lens_ext.data.streams import stream_batches
    from sae_lens_ext.data.windows import mark_layout_served
    from sae_lens_ext.training import distributed

    cfg = runner.cfg
    if not cfg.use_cached_activations and n_streams == 1 and distributed.world_size() == 1:
        return data_provider(runner)
    make = (
        cached_streams(runner, n_streams)
        if cfg.use_cached_activations
        else lm_streams(runner, n_streams)
    )
    device = torch.device(cfg.act_store_device or cfg.device)
    data = stream_batches(
        make,
        cfg.train_batch_size_tokens,
        n_streams,
        seed=cfg.seed,
        cuda_device=device if device.type == "cuda" else None,
        private_rng=not cfg.prefetch_llm_batches,
    )
    mark_layout_served(runner.sae)
    return data


def cached_streams(runner: Any, n_streams: int) -> Any:
    """``make_stream(s, rows)``: cached rows of shard ``s``, in shuffled whole windows."""
    from sae_lens.util import str_to_dtype

    from sae_lens_ext.data.cached import CachedActivationBatches, open_cache, stream_shard
    from sae_lens_ext.data.windows import batch_window

    cfg = runner.cfg
    dataset, _ = open_cache(cfg.cached_activations_path, cfg.hook_name)
    window = batch_window(runner.sae.cfg)

    def make_stream(s: int, rows: int) -> Any:
        return CachedActivationBatches(
            stream_shard(dataset, s, n_streams),
            cfg.hook_name,
            window,
            rows,
            rows_per_read=cfg.store_batch_size_prompts,
            n_reads_in_buffer=cfg.n_batches_in_buffer,
            seed=cfg.seed + s,
            device=cfg.act_store_device or cfg.device,
            dtype=str_to_dtype(cfg.dtype),
        )

    return make_stream


def lm_streams(runner: Any, n_streams: int) -> Any:
    """``make_stream(s, rows)``: an ``ActivationsStore`` on shard ``s`` of the token
    dataset (``datasets.distributed.split_dataset_by_node``), serving ``rows`` rows."""
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node
    from sae_lens.training.activations_store import ActivationsStore

    from sae_lens_ext.data.windows import batch_window
    from sae_lens_ext.training import distributed

    cfg = runner.cfg
    with distributed.main_first():  # rank 0 prepares the dataset cache, then the others
        try:
            dataset = load_dataset(
                cfg.dataset_path,
                split="train",
                streaming=cfg.streaming,
                trust_remote_code=cfg.dataset_trust_remote_code,
            )
        except Exception as exc:
            raise checks.hub_error(
                "dataset_path", cfg.dataset_path, exc, "--dataset_path ./data-dir --streaming False"
            ) from exc
    window = batch_window(runner.sae.cfg)

    def make_stream(s: int, rows: int) -> Any:
        # load_dataset(split="train") is one Dataset / IterableDataset, never a dict of splits
        shard = split_dataset_by_node(dataset, rank=s, world_size=n_streams)  # type: ignore[type-var]
        store = ActivationsStore.from_config(runner.model, cfg, override_dataset=shard)
        store.train_batch_size_tokens = rows  # this stream's block of each batch
        return store_batches(store, window, rows, cfg, seed=cfg.seed + s)

    return make_stream


def store_batches(store: Any, window: int, rows: int, cfg: Any, seed: int) -> Any:
    """Batches of ``rows`` rows from upstream's store, as ``iter(store)`` serves them
    (:class:`~sae_lens_ext.data.lm_batches.MixedTokenBatches`) or, for a window architecture,
    in whole windows; prefetched when ``--prefetch_llm_batches`` asks. Their
    ``state_dict`` holds the buffer and the store's exact position."""
    from sae_lens_ext.data.lm_batches import MixedTokenBatches, PrefetchedBatches
    from sae_lens_ext.data.windows import WindowShuffledLMBatches

    source: Any
    if window > 1:
        source = WindowShuffledLMBatches(
            store, window, rows, n_batches_in_buffer=cfg.n_batches_in_buffer, seed=seed
        )
    else:
        source = MixedTokenBatches(store)
    if cfg.prefetch_llm_batches:
        return PrefetchedBatches(source, cfg.prefetch_llm_batches)
    return source


def data_provider(runner: Any) -> Any:
    """What the SAE trains on (one process, one stream): upstream's store's batches, or
    whole windows of it for window architectures (:func:`store_batches`)."""
    from sae_lens_ext.data.windows import batch_window, mark_layout_served

    cfg = runner.cfg
    window = batch_window(runner.sae.cfg)
    if window > 1:
        mark_layout_served(runner.sae)
    return store_batches(
        runner.activations_store, window, cfg.train_batch_size_tokens, cfg, cfg.seed
    )


def run_lm(
    cfg: Any, output: RunOutput, *, log_every: int | None, progress: str, data_streams: int = 0
) -> int:
    """Build the runner, train with the core loop, save atomically, print a summary (under
    torchrun: on every rank, data-parallel; rank 0 writes)."""
    from sae_lens_ext.training import distributed

    with distributed.process_group(cfg.device) as device:
        for name in ("device", "llm_device", "act_store_device"):
            value = getattr(cfg, name, None)
            if isinstance(value, str) and value.startswith("cuda"):
                setattr(cfg, name, distributed.rank_device(value))
        cfg.device = device
        n_streams = data_streams or distributed.world_size()
        return _train_lm(cfg, output, log_every=log_every, progress=progress, n_streams=n_streams)


def _main_logger(trainer_cfg: Any, output: RunOutput, log_every: int, progress: str) -> Any:
    """The run's logger on rank 0 (or the only process); ``None`` on the other ranks."""
    from sae_lens_ext.run.progress import RunLogger
    from sae_lens_ext.training import distributed

    if not distributed.is_main():
        return None
    return RunLogger(
        output.log_path,
        trainer_cfg.total_training_samples,
        trainer_cfg.train_batch_size_samples,
        log_every,
        progress,
    )


def _train_lm(
    cfg: Any, output: RunOutput, *, log_every: int | None, progress: str, n_streams: int
) -> int:
    from sae_lens_ext.run.loop import (
        InterruptFlag,
        TrainingLoop,
        reconstruction_warning,
        seed_everything,
    )
    from sae_lens_ext.run.progress import default_log_every
    from sae_lens_ext.training import distributed
    from sae_lens_ext.training.sae import make_trainer

    t0 = time.perf_counter()
    seed_everything(cfg.seed)  # upstream's runner never uses cfg.seed
    with distributed.main_first():  # rank 0 downloads and caches first
        runner = build_runner(cfg)
    check_d_in(runner)
    record_inputs(runner)
    data = training_data(runner, n_streams)
    trainer_cfg = cfg.to_sae_trainer_config()
    log_every = log_every or default_log_every(  # the same on every rank
        trainer_cfg.total_training_samples, trainer_cfg.train_batch_size_samples
    )
    trainer = make_trainer(
        trainer_cfg,
        runner.sae,
        data,
        evaluator=runner.evaluator,
        save_checkpoint_fn=runner.save_checkpoint,
    )
    loop = TrainingLoop(
        trainer,
        data,
        logger=_main_logger(trainer_cfg, output, log_every, progress),
        interrupt=InterruptFlag(),
        check_every=log_every,
    )
    runner._compile_sae_if_needed()  # private upstream name: see docs/internals.md
    try:
        with output.running(), _wandb_run(cfg):
            sae = loop.run(output.resume_from)
            if not distributed.is_main():
                return 0  # rank 0 writes the SAE
            metrics = run_summary(cfg, loop, t0, n_streams)
            with getattr(data, "paused", contextlib.nullcontext)():  # a prefetcher
                save_run(runner, sae, trainer, output, metrics)
    finally:
        if hasattr(data, "close"):
            data.close()
    print_summary(output.folder, metrics, reconstruction_warning(loop.last_record))
    return 0


def save_run(
    runner: Any, sae: Any, trainer: Any, output: RunOutput, metrics: dict[str, Any]
) -> None:
    """The run's folder, staged (``cfg.json`` moved in last): upstream's final save (SAE,
    sparsity, ``runner_cfg.json``), ``metrics.json`` and ``plots/``."""
    from sae_lens_ext.run.output import read_log
    from sae_lens_ext.run.report import PLOTS_DIR, write_plots

    with output.staging() as tmp:
        runner.save_final_sae(sae, str(tmp), log_feature_sparsity=trainer.log_feature_sparsity)
        write_json(tmp / METRICS_FILENAME, metrics)
        log = read_log(output.log_path)
        write_plots(tmp / PLOTS_DIR, runner.cfg.sae.architecture(), log, sae, figure_data(runner))


#: Most tokens read after training for the plugins' figures (``plots/``); at most a tenth
#: of the run's tokens.
FIGURE_TOKENS = 100_000


def figure_data(runner: Any) -> Any:
    """Fresh activations (whole sequences, from where training stopped) for the plugins'
    figures of a run: ``EvalData``, or ``None`` when no plugin draws any or the run read
    cached activations."""
    from sae_lens_ext.data.lm_batches import store_sequences
    from sae_lens_ext.metrics import EvalData
    from sae_lens_ext.run.report import has_plugin_figures

    cfg, store = runner.cfg, runner.activations_store
    if store is None or not has_plugin_figures():
        return None
    tokens = min(FIGURE_TOKENS, max(1, cfg.training_tokens // 10))
    print(f"plots: the plugins' figures on {tokens:,} fresh tokens", file=sys.stderr)
    return EvalData(store_sequences(store, tokens), description=f"{cfg.model_name} {cfg.hook_name}")


@contextlib.contextmanager
def _wandb_run(cfg: Any) -> Iterator[None]:
    """A wandb run around training when ``--log_to_wandb True`` (as upstream's runner)."""
    from sae_lens_ext.training import distributed

    if not cfg.logger.log_to_wandb or not distributed.is_main():
        yield
        return
    import wandb

    wandb.init(
        project=cfg.logger.wandb_project,
        entity=cfg.logger.wandb_entity,
        config=cfg.to_dict(),
        name=cfg.logger.run_name,
        id=cfg.logger.wandb_id,
    )
    try:
        yield
    finally:
        wandb.finish()


def run_summary(cfg: Any, loop: Any, t0: float, n_streams: int = 1) -> dict[str, Any]:
    """``metrics.json`` of a run that began at ``time.perf_counter()`` = ``t0``."""
    from sae_lens_ext.training import distributed

    trainer, last, now = loop.trainer, loop.last_record, time.perf_counter()
    first_step = loop.first_step_at
    return {
        "architecture": cfg.sae.architecture(),
        "processes": distributed.world_size(),
        "data_streams": n_streams,
        "cached_activations": bool(cfg.use_cached_activations),
        "training_samples": trainer.n_training_samples,
        "training_steps": trainer.n_training_steps,
        "last_step": last,
        "l0_last_sparsity_window": trainer.sae.cfg.metadata.l0,
        "sparsity_window_steps": trainer.cfg.feature_sampling_window,
        "trainer_dead_latents": trainer.sae.cfg.metadata.num_dead_features,
        "dead_feature_window_steps": trainer.cfg.dead_feature_window,
        "wall_time_s": round(now - t0, 2),
        "before_first_step_s": None if first_step is None else round(first_step - t0, 2),
    }


def print_summary(output: Path, metrics: dict[str, Any], warning: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    last = metrics.get("last_step") or {}
    table = Table(title=f"Trained {metrics['architecture']} SAE")
    table.add_column("metric")
    table.add_column("value", justify="right")
    window = metrics["sparsity_window_steps"]
    rows = [
        (
            "training samples (steps)",
            f"{metrics['training_samples']:,} ({metrics['training_steps']:,})",
        ),
        ("loss (last step)", _fmt(last.get("loss"))),
        ("explained variance (last step)", _fmt(last.get("explained_variance"))),
        ("L0 (last step)", _fmt(last.get("l0"))),
        (
            f"L0 (mean over the last sparsity window, <= {window} steps)",
            _fmt(metrics["l0_last_sparsity_window"]),
        ),
        (
            f"dead latents (trainer: no firing in {metrics['dead_feature_window_steps']} steps)",
            _fmt(metrics["trainer_dead_latents"]),
        ),
        ("wall time (s)", _fmt(metrics["wall_time_s"])),
        (
            "of which before the first step (s): model, data, normalisation",
            _fmt(metrics["before_first_step_s"]),
        ),
    ]
    for row in rows:
        table.add_row(*row)
    console = Console(width=100)
    console.print(table)
    if warning:
        Console(stderr=True, width=100).print(f"[bold red]{warning}[/bold red]")
    console.print(f"SAE, metrics.json, training_log.jsonl and plots/ written to {output}")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_and_store(runner_cfg: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The model and activation store a run was trained on (for ``evaluate``):
    ``(cfg, model, store)``, through upstream's public ``load_model`` and
    ``ActivationsStore.from_config``."""
    import dataclasses

    from sae_lens.config import LanguageModelSAERunnerConfig
    from sae_lens.training.activations_store import ActivationsStore

    known = {f.name for f in dataclasses.fields(LanguageModelSAERunnerConfig)}
    try:  # keys of other runners (or upstream releases) that this config lacks: left out
        cfg = LanguageModelSAERunnerConfig.from_dict(
            {k: v for k, v in runner_cfg.items() if k in known}
        )
    except Exception as exc:
        raise fail(f"runner_cfg.json: cannot be read as a runner config ({one_line(exc)})") from exc
    checks.check_devices(cfg)
    checks.check_paths(cfg)
    print(f"Loading {cfg.model_name} and {cfg.dataset_path}", file=sys.stderr)
    model = load_model(cfg)
    try:
        store = ActivationsStore.from_config(model, cfg)
    except Exception as exc:
        raise checks.hub_error(
            "dataset_path", cfg.dataset_path, exc, "--dataset_path ./data-dir --streaming False"
        ) from exc
    return cfg, model, store
