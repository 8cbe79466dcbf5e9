"""The body of ``sae-lens train`` (heavy imports happen here, not in ``train.py``)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from sae_lens_ext.commands._errors import (
    USAGE,
    CliError,
    fail,
    holds_trained_sae,
    one_line,
    refuse_trained,
)

_DATA_SUFFIXES = (".json", ".jsonl", ".txt", ".csv", ".parquet", ".arrow")
_NETWORK_WORDS = (
    "offline",
    "couldn't connect",
    "could not connect",
    "couldn't reach",
    "connection",
    "cannot be reached",
    "max retries",
    "name resolution",
    "not found in the disk cache",
    "local_files_only",
    "network",
)
_NETWORK_TYPES = (
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectError",
    "ConnectionError",
    "ConnectTimeout",
    "ProxyError",
    "NameResolutionError",
)


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------
def config_file_args(path: str) -> list[str]:
    """Turn a YAML/JSON mapping of upstream option names into upstream flags."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise fail(f"--config: no such file {path}")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise fail(f"--config {path}: not valid YAML ({one_line(exc)})") from exc
    if not isinstance(data, dict):
        raise fail(f"--config {path}: expected a mapping of option names to values")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("sae", "logger") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    args: list[str] = []
    for key, value in flat.items():
        args.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            args.extend("None" if v is None else str(v) for v in value)
        elif isinstance(value, dict):
            args.append(json.dumps(value))
        else:
            args.append("None" if value is None else str(value))
    return args


def flag_values(args: list[str], name: str) -> list[str]:
    """Every value given to ``--name`` (``--name v`` or ``--name=v``), in order."""
    values = []
    for i, token in enumerate(args):
        if token == f"--{name}" and i + 1 < len(args):
            values.append(args[i + 1])
        elif token.startswith(f"--{name}="):
            values.append(token.split("=", 1)[1])
    return values


def parse_upstream(args: list[str]) -> Any:
    """Parse with upstream's own parser; any complaint becomes one usage-error line."""
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return _parse_cfg_args(args)
    except SystemExit as exc:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        message = next(
            (ln.split("error:", 1)[1] for ln in reversed(lines) if "error:" in ln),
            lines[-1] if lines else f"exit {exc.code}",
        )
        raise fail(
            f"{one_line(message)} (list the options with: sae-lens train "
            f"--architecture ARCH --help-options)"
        ) from None
    except Exception as exc:
        raise fail(f"{type(exc).__name__}: {one_line(exc)}") from exc


def print_upstream_help(args: list[str]) -> int:
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    try:
        _parse_cfg_args([*args, "--help"])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


# --------------------------------------------------------------------------------------
# Checks that turn likely mistakes into one line naming the fix
# --------------------------------------------------------------------------------------
def looks_local(value: str) -> bool:
    return (
        value.startswith((".", "/", "~"))
        or value.count("/") > 1
        or value.endswith(_DATA_SUFFIXES)
        or value.startswith("..")
    )


def check_device(flag: str, value: str) -> None:
    """Refuse a CUDA/MPS device this machine does not have."""
    import torch

    if value.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
        raise fail(
            f"--{flag} {value}: CUDA is not available here (torch {torch.__version__}, "
            f"{build}); use --{flag} cpu"
        )
    if value.startswith("mps") and not torch.backends.mps.is_available():
        raise fail(f"--{flag} {value}: MPS is not available here; use --{flag} cpu")


def check_devices(cfg: Any) -> None:
    for name in ("device", "llm_device", "act_store_device"):
        check_device(name, str(getattr(cfg, name, None) or ""))


def check_paths(cfg: Any) -> None:
    model = str(cfg.model_name)
    model_path = Path(model).expanduser()
    if model_path.exists():
        if cfg.model_class_name == "HookedTransformer":
            raise fail(
                f"--model_name {model} is a local folder, which HookedTransformer cannot "
                "load; add --model_class_name AutoModelForCausalLM"
            )
    elif looks_local(model):
        raise fail(
            f"--model_name {model}: no such folder; give the folder of a model saved "
            "with save_pretrained (and --model_class_name AutoModelForCausalLM)"
        )
    if cfg.use_cached_activations:
        cached = cfg.cached_activations_path
        if cached and not Path(cached).expanduser().exists():
            raise fail(
                f"--cached_activations_path {cached}: no such folder; create it with "
                "upstream's CacheActivationsRunner or fix the path"
            )
        return
    data = str(cfg.dataset_path)
    if not data:
        raise fail(
            "--dataset_path is required: a local folder/file (with --streaming False) "
            "or a Hub dataset name"
        )
    if not Path(data).expanduser().exists() and looks_local(data):
        raise fail(f"--dataset_path {data}: no such file or folder")


def precheck(args: list[str], *, overwrite: bool) -> None:
    """Checks on the raw flags (no SAE-Lens import): output folder, model and data paths."""
    from types import SimpleNamespace

    def last(name: str, default: Any) -> Any:
        values = flag_values(args, name)
        return values[-1] if values else default

    output = last("output_path", "output")
    if not overwrite and output != "None" and holds_trained_sae(Path(output)):
        refuse_trained(Path(output), "--output_path")
    use_cached = str(last("use_cached_activations", "False")).lower() == "true"
    check_paths(
        SimpleNamespace(
            model_name=last("model_name", "gelu-2l"),
            model_class_name=last("model_class_name", "HookedTransformer"),
            use_cached_activations=use_cached,
            cached_activations_path=last("cached_activations_path", None),
            dataset_path=last("dataset_path", "" if not use_cached else "x"),
        )
    )


def is_network_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ in _NETWORK_TYPES:
            return True
        text = str(seen).lower()
        if any(word in text for word in _NETWORK_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def hub_error(setting: str, value: str, exc: BaseException, local_hint: str) -> BaseException:
    if is_network_error(exc):
        return fail(
            f"--{setting} {value} is not a local path and the Hugging Face Hub cannot be "
            f"reached (offline); use a local path instead: {local_hint}"
        )
    return exc


# --------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------
def build_runner(cfg: Any) -> Any:
    """Upstream's runner, built step by step so each failure names its setting."""
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, LLMSaeEvaluator
    from sae_lens.load_model import load_model
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
    from sae_lens.training.activations_store import ActivationsStore

    runner = LanguageModelSAETrainingRunner.__new__(LanguageModelSAETrainingRunner)
    runner.cfg = cfg
    try:
        runner.model = load_model(
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
        raise hub_error(
            "model_name",
            cfg.model_name,
            exc,
            "--model_class_name AutoModelForCausalLM --model_name ./model-dir",
        ) from exc
    runner._compile_llm_if_needed()
    try:
        runner.activations_store = ActivationsStore.from_config(runner.model, cfg)
    except Exception as exc:
        raise hub_error(
            "dataset_path", cfg.dataset_path, exc, "--dataset_path ./data-dir --streaming False"
        ) from exc
    if cfg.from_pretrained_path is not None:
        if not Path(cfg.from_pretrained_path).exists():
            raise fail(f"--from_pretrained_path {cfg.from_pretrained_path}: no such folder")
        runner.sae = TrainingSAE.load_from_disk(cfg.from_pretrained_path, cfg.device)
    else:
        runner.sae = TrainingSAE.from_dict(
            TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict()
        )
    runner.sae.to(cfg.device)
    runner.evaluator = LLMSaeEvaluator(
        model=runner.model,
        activations_store=runner.activations_store,
        eval_batch_size_prompts=cfg.eval_batch_size_prompts,
        n_eval_batches=cfg.n_eval_batches,
        model_kwargs=cfg.model_kwargs,
    )
    return runner


def check_d_in(runner: Any) -> None:
    """Compare ``--d_in`` with the width of the hook, on one context of token 0."""
    import torch
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    cfg, store = runner.cfg, runner.activations_store
    if cfg.use_cached_activations:
        return
    tokens = torch.zeros((1, cfg.context_size), dtype=torch.long)
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


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------
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
    if config_file is not None:
        args = config_file_args(config_file) + args  # later flags win in argparse
    if not help_options:
        precheck(args, overwrite=overwrite)  # cheap checks before SAE-Lens's slow import
    architectures = flag_values(args, "architecture")

    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    if architectures and architectures[-1] not in SAE_TRAINING_CLASS_REGISTRY:
        raise fail(
            f"unknown --architecture {architectures[-1]!r}; registered: "
            f"{', '.join(sorted(SAE_TRAINING_CLASS_REGISTRY))}"
        )
    if help_options:
        return print_upstream_help(args)
    if not args:
        raise fail("no options given; see 'sae-lens train --help' for an example")

    cfg = parse_upstream(["--log_to_wandb", "False", *args])
    if cfg.output_path is None or str(cfg.output_path) == "None":
        raise fail("--output_path is required (the folder the trained SAE is written to)")
    output = Path(cfg.output_path)
    given_checkpoint = flag_values(args, "checkpoint_path")
    if given_checkpoint:  # upstream appends a random id; use the path as given so --resume finds it
        cfg.checkpoint_path = None if given_checkpoint[-1] == "None" else given_checkpoint[-1]
    else:
        cfg.checkpoint_path = str(output / "checkpoints")
    checkpoint_dir = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None

    check_devices(cfg)
    check_paths(cfg)
    resume_from = prepare_output_for(output, checkpoint_dir, overwrite=overwrite, resume=resume)
    return run_lm(cfg, output, resume_from, log_every=log_every, progress=progress)


def prepare_output_for(
    output: Path, checkpoint_dir: Path | None, *, overwrite: bool, resume: bool
) -> Path | None:
    from sae_lens_ext.commands._run import prepare_output

    return prepare_output(output, checkpoint_dir, overwrite=overwrite, resume=resume)


def sae_window(sae_cfg: Any) -> int:
    """Positions an SAE needs together in a batch (``temporal_window``, attention window)."""
    window = int(getattr(sae_cfg, "temporal_window", 0) or 0)
    if getattr(sae_cfg, "attention", False):
        window = max(window, int(getattr(sae_cfg, "attention_window", 0) or 0))
    return window


def window_batches(store: Any, cfg: Any, window: int) -> Any:
    """Batches of whole windows of consecutive positions, shuffled by window.

    Upstream's store shuffles single tokens, which would put unrelated positions
    next to each other; window SAEs train on the temporal_consistency plugin's
    ``WindowShuffledLMBatches`` over the same store instead.
    """
    try:
        from sae_lens_ext_plugins.temporal_consistency.data import WindowShuffledLMBatches
    except ImportError as exc:
        raise fail(
            f"this SAE needs windows of {window} positions, served by the "
            "temporal_consistency plugin's WindowShuffledLMBatches; install that "
            "plugin"
        ) from exc
    try:
        return WindowShuffledLMBatches(
            store,
            window,
            cfg.train_batch_size_tokens,
            n_batches_in_buffer=cfg.n_batches_in_buffer,
            seed=cfg.seed,
        )
    except ValueError as exc:
        raise fail(one_line(exc)) from exc


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random: SAE initialisation and buffer shuffling then repeat."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_lm(
    cfg: Any, output: Path, resume_from: Path | None, *, log_every: int, progress: str
) -> int:
    import wandb
    from sae_lens.training.prefetch import PrefetchingIterator

    from sae_lens_ext.commands._run import (
        METRICS_FILENAME,
        TRAINING_LOG,
        CliTrainer,
        InterruptFlag,
        RunLogger,
        TrainingInterrupted,
        run_training,
        staging,
        write_json,
    )

    t0 = time.perf_counter()
    seed_everything(cfg.seed)  # upstream's runner never uses cfg.seed
    runner = build_runner(cfg)
    check_d_in(runner)
    runner._set_sae_metadata()
    if cfg.logger.log_to_wandb:
        wandb.init(
            project=cfg.logger.wandb_project,
            entity=cfg.logger.wandb_entity,
            config=cfg.to_dict(),
            name=cfg.logger.run_name,
            id=cfg.logger.wandb_id,
        )
    data_provider: Any = runner.activations_store
    window = sae_window(cfg.sae)
    if window > 1:
        data_provider = window_batches(runner.activations_store, cfg, window)
    elif cfg.prefetch_llm_batches:
        size = 1 if isinstance(cfg.prefetch_llm_batches, bool) else cfg.prefetch_llm_batches
        data_provider = PrefetchingIterator(iter(runner.activations_store), prefetch=size)
    interrupt = InterruptFlag()
    trainer_cfg = cfg.to_sae_trainer_config()
    run_logger = RunLogger(
        output / TRAINING_LOG,
        trainer_cfg.total_training_samples,
        trainer_cfg.train_batch_size_samples,
        log_every,
        progress,
    )
    trainer = CliTrainer(
        sae=runner.sae,
        data_provider=data_provider,
        evaluator=runner.evaluator,
        save_checkpoint_fn=runner.save_checkpoint,
        cfg=trainer_cfg,
        run_logger=run_logger,
        interrupt=interrupt,
    )

    def before_fit() -> None:
        if resume_from is not None:
            print(f"Resuming from {resume_from}", file=sys.stderr)
            trainer.resume_from(resume_from)
            # Upstream's store saves its dataset position, not its shuffle buffer: the
            # activations served after resuming differ from an uninterrupted run's.
            runner.activations_store.load_from_checkpoint(resume_from)
        runner._compile_sae_if_needed()

    try:
        sae = run_training(trainer, interrupt, before_fit)
    except TrainingInterrupted as exc:
        raise CliError(str(exc), 130) from exc
    finally:
        if isinstance(data_provider, PrefetchingIterator):
            data_provider.close()

    metrics = {
        "architecture": cfg.sae.architecture(),
        "training_samples": trainer.n_training_samples,
        "training_steps": trainer.n_training_steps,
        "l0": sae.cfg.metadata.l0,
        "dead_latents": sae.cfg.metadata.num_dead_features,
        "final_step": run_logger.last_record,
        "wall_time_s": round(time.perf_counter() - t0, 2),
    }
    with staging(output) as tmp:
        runner.save_final_sae(sae, str(tmp), log_feature_sparsity=trainer.log_feature_sparsity)
        write_json(tmp / METRICS_FILENAME, metrics)
    if cfg.logger.log_to_wandb:
        wandb.finish()
    print_summary(output, metrics)
    return 0


def print_summary(output: Path, metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Trained {metrics['architecture']} SAE")
    table.add_column("metric")
    table.add_column("value", justify="right")
    last = metrics.get("final_step") or {}
    rows = [
        ("training samples", f"{metrics['training_samples']:,}"),
        ("explained variance (last step)", _fmt(last.get("explained_variance"))),
        ("L0 (last sparsity window)", _fmt(metrics.get("l0"))),
        ("dead latents", _fmt(metrics.get("dead_latents"))),
        ("loss (last step)", _fmt(last.get("loss"))),
        ("wall time (s)", _fmt(metrics.get("wall_time_s"))),
    ]
    for row in rows:
        table.add_row(*row)
    console = Console(width=100)
    console.print(table)
    console.print(f"SAE, metrics and training log written to {output}")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


__all__ = ["USAGE", "train"]
