"""``sae-lens train``: upstream's language-model runner, built through its constructor and
trained by the core's :class:`~sae_lens_ext.run.loop.TrainingLoop`."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sae_lens_ext.errors import fail, one_line
from sae_lens_ext.run import lm_config as checks
from sae_lens_ext.run.output import METRICS_FILENAME, RunOutput, write_json


def train(
    *,
    config_file: str | None,
    args: list[str],
    resume: bool,
    overwrite: bool,
    log_every: int,
    progress: str,
    help_options: bool,
) -> int:
    """The body of ``sae-lens train`` (see ``sae-lens train --help``)."""
    if config_file is not None:
        args = checks.options_to_args(checks.config_file_options(config_file)) + args
    if not help_options:
        checks.precheck(args, overwrite=overwrite)  # before SAE-Lens's slow import
    checks.check_architecture(args)
    if help_options:
        return checks.print_upstream_help(args)
    if not args:
        raise fail("no options given; see 'sae-lens train --help' for an example")
    cfg = parse_config(args, config_file)
    output = RunOutput(
        Path(cfg.output_path), _checkpoint_dir(cfg), overwrite=overwrite, resume=resume
    )
    output.check()
    return run_lm(cfg, output, log_every=log_every, progress=progress)


def parse_config(args: list[str], config_file: str | None) -> Any:
    """Upstream's runner config from the flags, with every check that needs no model."""
    from sae_lens_ext.windows import BatchLayoutError, batch_window, validate_window_layout

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
    try:
        validate_window_layout(
            window,
            batch_size=cfg.train_batch_size_tokens,
            context_size=_sliced_context(cfg),
            exclude_special_tokens=cfg.exclude_special_tokens,
        )
    except BatchLayoutError as exc:
        raise fail(str(exc)) from exc
    checks.fit_buffer(cfg, args, window)
    return cfg


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
    """Upstream's ``LanguageModelSAETrainingRunner``, through its public constructor."""
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    if cfg.from_pretrained_path is not None and not Path(cfg.from_pretrained_path).exists():
        raise fail(f"--from_pretrained_path {cfg.from_pretrained_path}: no such folder")
    model = load_model(cfg)
    check_context(cfg, model)
    try:
        with _quiet_override_warning():
            return LanguageModelSAETrainingRunner(cfg, override_model=model)
    except Exception as exc:
        raise checks.hub_error(
            "dataset_path", cfg.dataset_path, exc, "--dataset_path ./data-dir --streaming False"
        ) from exc


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


def data_provider(runner: Any) -> Any:
    """What the SAE trains on: whole windows for window architectures, else upstream's store."""
    from sae_lens.training.prefetch import PrefetchingIterator

    from sae_lens_ext.windows import WindowShuffledLMBatches, batch_window, mark_layout_served

    cfg = runner.cfg
    window = batch_window(runner.sae.cfg)
    if window > 1:
        provider = WindowShuffledLMBatches(
            runner.activations_store,
            window,
            cfg.train_batch_size_tokens,
            n_batches_in_buffer=cfg.n_batches_in_buffer,
            seed=cfg.seed,
        )
        mark_layout_served(runner.sae)
        return provider
    if cfg.prefetch_llm_batches:
        size = 1 if isinstance(cfg.prefetch_llm_batches, bool) else cfg.prefetch_llm_batches
        return PrefetchingIterator(iter(runner.activations_store), prefetch=size)
    return runner.activations_store


def run_lm(cfg: Any, output: RunOutput, *, log_every: int, progress: str) -> int:
    """Build the runner, train with the core loop, save atomically, print a summary."""
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_lens_ext.run.loop import (
        InterruptFlag,
        TrainingLoop,
        reconstruction_warning,
        seed_everything,
    )
    from sae_lens_ext.run.progress import RunLogger

    t0 = time.perf_counter()
    seed_everything(cfg.seed)  # upstream's runner never uses cfg.seed
    runner = build_runner(cfg)
    check_d_in(runner)
    runner._set_sae_metadata()  # private upstream name: see docs/internals.md
    data = data_provider(runner)
    trainer_cfg = cfg.to_sae_trainer_config()
    trainer = SAETrainer(
        cfg=trainer_cfg,
        sae=runner.sae,
        data_provider=data,
        evaluator=runner.evaluator,
        save_checkpoint_fn=runner.save_checkpoint,
    )
    logger = RunLogger(
        output.log_path,
        trainer_cfg.total_training_samples,
        trainer_cfg.train_batch_size_samples,
        log_every,
        progress,
    )
    loop = TrainingLoop(
        trainer,
        data,
        logger=logger,
        interrupt=InterruptFlag(),
        on_resume=runner.activations_store.load_from_checkpoint,
    )
    runner._compile_sae_if_needed()  # private upstream name: see docs/internals.md
    try:
        with output.running(), _wandb_run(cfg):
            sae = loop.run(output.resume_from)
            metrics = run_summary(cfg, loop, time.perf_counter() - t0)
            with output.staging() as tmp:
                runner.save_final_sae(
                    sae, str(tmp), log_feature_sparsity=trainer.log_feature_sparsity
                )
                write_json(tmp / METRICS_FILENAME, metrics)
    finally:
        if hasattr(data, "close"):
            data.close()
    print_summary(output.folder, metrics, reconstruction_warning(loop.last_record))
    return 0


@contextlib.contextmanager
def _wandb_run(cfg: Any) -> Iterator[None]:
    """A wandb run around training when ``--log_to_wandb True`` (as upstream's runner)."""
    if not cfg.logger.log_to_wandb:
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


def run_summary(cfg: Any, loop: Any, seconds: float) -> dict[str, Any]:
    trainer, last = loop.trainer, loop.last_record
    return {
        "architecture": cfg.sae.architecture(),
        "training_samples": trainer.n_training_samples,
        "training_steps": trainer.n_training_steps,
        "last_step": last,
        "l0_last_sparsity_window": trainer.sae.cfg.metadata.l0,
        "sparsity_window_steps": trainer.cfg.feature_sampling_window,
        "trainer_dead_latents": trainer.sae.cfg.metadata.num_dead_features,
        "dead_feature_window_steps": trainer.cfg.dead_feature_window,
        "wall_time_s": round(seconds, 2),
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
    ]
    for row in rows:
        table.add_row(*row)
    console = Console(width=100)
    console.print(table)
    if warning:
        Console(stderr=True, width=100).print(f"[bold red]{warning}[/bold red]")
    console.print(f"SAE, metrics.json and training_log.jsonl written to {output}")


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
    from sae_lens.config import LanguageModelSAERunnerConfig
    from sae_lens.training.activations_store import ActivationsStore

    try:
        cfg = LanguageModelSAERunnerConfig.from_dict(runner_cfg)
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
