"""``sae-lens train`` arguments: upstream's own parser, and the checks that turn likely
mistakes into one line naming the setting, all before any model is loaded."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from sae_lens_ext.errors import fail, holds_trained_sae, one_line, read_mapping, refuse_trained
from sae_lens_ext.run.values import NotANumber, field_types, number_kind, to_number

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
#: Sections of a config file whose options are merged into the top level (with an example).
SECTIONS = {"sae": "d_sae: 512", "logger": "log_to_wandb: false"}


def config_file_options(path: str) -> dict[str, Any]:
    """The upstream options of a YAML/JSON file (``sae:``/``logger:`` sections flattened)."""
    data = read_mapping(path, "--config", "a mapping of option names to values")
    return flatten_sections(data, f"--config {path}")


def flatten_sections(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``sae:``/``logger:`` sections (mappings of options) merged into the top level; a
    section of another form is one line naming ``where`` (upstream would read ``sae`` as
    its ``--sae/--architecture`` flag and blame a flag never typed)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                form = (
                    "a list (lines starting with '- ')" if isinstance(value, list) else repr(value)
                )
                raise fail(
                    f"{where}: {key}: expected a mapping of options, one 'name: value' per "
                    f"line (e.g. '{SECTIONS[key]}'), got {form}"
                )
            flat.update(value)
        else:
            flat[key] = value
    return flat


def options_to_args(options: dict[str, Any]) -> list[str]:
    """``{name: value}`` as upstream flags (lists: several values; mappings: JSON)."""
    args: list[str] = []
    for key, value in options.items():
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


def last_flag(args: list[str], name: str, default: Any = None) -> Any:
    values = flag_values(args, name)
    return values[-1] if values else default


def parse_upstream(args: list[str], config_file: str | None = None) -> Any:
    """Parse with upstream's own parser (``_parse_cfg_args``); any complaint becomes one
    usage-error line (naming ``config_file`` when the bad option came from it)."""
    import argparse

    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    args = route_loss_terms(args)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return _parse_cfg_args(whole_numbers(args))
    except argparse.ArgumentError as exc:
        raise fail(_parser_message(one_line(exc), config_file)) from None
    except SystemExit as exc:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        message = next(
            (ln.split("error:", 1)[1] for ln in reversed(lines) if "error:" in ln),
            lines[-1] if lines else f"exit {exc.code}",
        )
        raise fail(_parser_message(one_line(message), config_file)) from None
    except Exception as exc:
        # a config's own check (__post_init__) says what is wrong in its message
        kind = "" if isinstance(exc, ValueError) else f"{type(exc).__name__}: "
        raise fail(f"{kind}{one_line(exc)}") from exc


def upstream_field_types(args: list[str]) -> dict[str, Any]:
    """The type of each option upstream's parser takes with ``args``: the runner config,
    its logger section and the training config of ``--architecture`` (default standard)."""
    from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    types = {**field_types(LoggingConfig), **field_types(LanguageModelSAERunnerConfig)}
    architecture = last_flag(args, "architecture", "standard")
    if architecture in SAE_TRAINING_CLASS_REGISTRY:
        types.update(field_types(SAE_TRAINING_CLASS_REGISTRY[architecture][1]))
    return types


def whole_numbers(args: list[str]) -> list[str]:
    """``args`` with the values of integer options written as Python writes whole numbers
    (``--training_tokens 1e9``, ``2.0e+6`` from a YAML file) given as integers, which
    upstream's parser (``int()``) refuses; float options already take what ``float()``
    takes. Values that are not numbers are left for upstream's parser to name."""
    types = upstream_field_types(args)
    out = list(args)
    for i, token in enumerate(args):
        name, eq, inline = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if number_kind(types.get(name)) is not int:
            continue
        index = i if eq else i + 1
        raw = inline if eq else (args[index] if index < len(args) else None)
        if raw is None or raw.startswith("--"):
            continue
        try:
            value = str(to_number(raw, int))
        except NotANumber:
            continue
        out[index] = f"--{name}={value}" if eq else value
    return out


def _parser_message(message: str, config_file: str | None) -> str:
    hint = "list the options with: sae-lens train --architecture ARCH --help-options"
    if config_file is not None and "unrecognized arguments" in message:
        file_keys = set(config_file_options(config_file))
        bad = [t[2:].split("=")[0] for t in message.split() if t.startswith("--")]
        from_file = [b for b in bad if b in file_keys]
        if from_file:
            return f"--config {config_file}: unknown option {from_file[0]!r} ({hint})"
    return f"{message} ({hint})"


def route_loss_terms(args: list[str]) -> list[str]:
    """``args`` training an SAE-Lens architecture's loss-term twin instead of the
    architecture itself when they give a loss-term setting (``--loss_terms``...) that the
    architecture lacks: ``--architecture standard --loss_terms t=0.1`` trains
    ``standard_with_loss_terms``, which saves a ``standard`` SAE (see
    :mod:`sae_lens_ext.training.twins`)."""
    from sae_lens_ext.training.twins import TWIN_FIELDS, route_to_twin

    given = {name for name in TWIN_FIELDS if flag_values(args, name)}
    if not given:
        return args
    architecture = last_flag(args, "architecture", "standard")  # upstream's default
    routed = route_to_twin(architecture, given)
    if routed == architecture:
        return args
    print(
        f"--architecture {architecture} with --{sorted(given)[0]}: training {routed} "
        f"(SAE-Lens's {architecture} plus loss terms; it saves a {architecture} SAE)",
        file=sys.stderr,
    )
    return [*args, "--architecture", routed]


def print_upstream_help(args: list[str]) -> int:
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    args = route_loss_terms(args)
    try:
        _parse_cfg_args([*args, "--help"])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def check_architecture(args: list[str]) -> None:
    """An unknown ``--architecture`` is reported before anything else."""
    architectures = flag_values(args, "architecture")
    if not architectures:
        return
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    if architectures[-1] not in SAE_TRAINING_CLASS_REGISTRY:
        raise fail(
            f"unknown --architecture {architectures[-1]!r}; registered: "
            f"{', '.join(sorted(SAE_TRAINING_CLASS_REGISTRY))}"
        )


# --------------------------------------------------------------------------------------
# Checks on the parsed config (no model loaded yet)
# --------------------------------------------------------------------------------------
def looks_local(value: str) -> bool:
    return (
        value.startswith((".", "/", "~")) or value.count("/") > 1 or value.endswith(_DATA_SUFFIXES)
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
    """Model and data paths that cannot work (a folder for HookedTransformer, a missing file)."""
    model = str(cfg.model_name)
    if Path(model).expanduser().exists():
        if cfg.model_class_name == "HookedTransformer":
            raise fail(
                f"--model_name {model} is a local folder, which HookedTransformer cannot "
                "load; add --model_class_name AutoModelForCausalLM"
            )
        check_model_folder(model)
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
    check_dataset_path(data)


#: Files that make a folder a saved model (``save_pretrained``), not a dataset.
_MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def check_model_folder(model: str) -> None:
    """A local ``--model_name`` is a folder written by ``save_pretrained`` (``config.json``)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise fail(
            f"--model_name {model} is a file; give the folder of a model saved with "
            "save_pretrained (config.json and the weights)"
        )
    if not (folder / "config.json").is_file():
        data = [p.name for p in folder.iterdir() if p.suffix in _DATA_SUFFIXES][:3]
        what = (
            f" (it holds {', '.join(data)}: a dataset? give it as --dataset_path)" if data else ""
        )
        raise fail(
            f"--model_name {model}: no config.json there, so not a model saved with "
            f"save_pretrained{what}"
        )


def check_dataset_path(data: str) -> None:
    """A local ``--dataset_path`` that holds a saved model instead of a dataset."""
    folder = Path(data).expanduser()
    if not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir()}
    model_files = [n for n in _MODEL_FILES if n in names]
    weights = [n for n in sorted(names) if n.endswith(_WEIGHT_SUFFIXES)]
    if "config.json" in names and (weights or "tokenizer.json" in names):
        found = ", ".join(model_files + [w for w in weights if w not in model_files][:2])
        raise fail(
            f"--dataset_path {data} holds a saved model ({found}), not a dataset; give the "
            "folder or file of the text (or tokenized) dataset, and the model as --model_name"
        )


def check_context_flag(args: list[str]) -> None:
    """``--context_size`` <= 0, which upstream's config rejects with a message about slices."""
    raw = last_flag(args, "context_size")
    try:
        value = int(raw) if raw is not None else 1
    except ValueError:
        return  # upstream's parser names the bad value
    if value <= 0:
        raise fail(f"--context_size {raw}: must be a positive number of tokens")


def check_numbers(cfg: Any) -> None:
    """Settings upstream accepts but that cannot train."""
    if not cfg.lr > 0:
        raise fail(f"--lr {cfg.lr}: the learning rate must be > 0")
    if cfg.train_batch_size_tokens <= 0:
        raise fail(f"--train_batch_size_tokens {cfg.train_batch_size_tokens}: must be > 0")
    if cfg.training_tokens < 1:
        raise fail(
            f"--training_tokens {cfg.training_tokens}: the run would train 0 steps; give at "
            f"least one batch (--train_batch_size_tokens {cfg.train_batch_size_tokens})"
        )


def fit_buffer(cfg: Any, args: list[str], window: int) -> None:
    """Make the activation buffer hold what one training batch needs.

    Upstream's store mixes ``n_batches_in_buffer x context_size`` tokens and fails when
    that is below ``train_batch_size_tokens``; the window provider needs a batch to be
    at most half of its ``n_batches_in_buffer x store_batch_size_prompts`` contexts.
    When the user did not set ``--n_batches_in_buffer`` the smallest working value is
    chosen and said; a value the user set that cannot work is refused.
    """
    context, batch = cfg.context_size, cfg.train_batch_size_tokens
    if window > 1:
        per_read = cfg.store_batch_size_prompts * context
        needed = math.ceil(2 * batch / per_read)
    else:
        needed = math.ceil(batch / context)
    if cfg.n_batches_in_buffer >= needed:
        return
    if flag_values(args, "n_batches_in_buffer"):
        raise fail(
            f"--n_batches_in_buffer {cfg.n_batches_in_buffer}: the activation buffer must hold "
            f"one training batch of {batch} tokens; set --n_batches_in_buffer {needed} or more"
        )
    print(
        f"n_batches_in_buffer: {cfg.n_batches_in_buffer} -> {needed}, so that the activation "
        f"buffer holds a training batch of {batch} tokens (context_size {context}); set "
        "--n_batches_in_buffer to choose",
        file=sys.stderr,
    )
    cfg.n_batches_in_buffer = needed


#: Share of a run's steps the activation-norm estimate reads when the user did not choose.
NORM_ESTIMATE_SHARE = 0.05


def fit_norm_estimate(cfg: Any, args: list[str]) -> None:
    """Size the activation-norm estimate to the run when the user did not.

    Upstream reads ``n_batches_for_norm_estimate`` = 1000 batches before the first step
    whenever ``normalize_activations`` is ``expected_average_only_in`` (or
    ``covariance_whitening``): minutes of a short run. Unset, it becomes 5 % of the run's
    steps (at least one batch; for whitening at least ``10 x d_in`` rows), and at most
    upstream's 1000; the choice is said.
    """
    mode = cfg.sae.normalize_activations
    if mode not in ("expected_average_only_in", "covariance_whitening"):
        return
    if flag_values(args, "n_batches_for_norm_estimate"):
        return
    batch = cfg.train_batch_size_tokens
    steps = math.ceil(cfg.training_tokens / batch)
    floor = math.ceil(10 * cfg.sae.d_in / batch) if mode == "covariance_whitening" else 1
    chosen = min(
        cfg.n_batches_for_norm_estimate, max(floor, math.ceil(NORM_ESTIMATE_SHARE * steps))
    )
    if chosen == cfg.n_batches_for_norm_estimate:
        return
    print(
        f"n_batches_for_norm_estimate: {cfg.n_batches_for_norm_estimate} -> {chosen} "
        f"({chosen * batch:,} tokens, 5% of the run's {steps:,} steps), read before the "
        "first step; set --n_batches_for_norm_estimate to choose",
        file=sys.stderr,
    )
    cfg.n_batches_for_norm_estimate = chosen


def precheck(args: list[str], *, overwrite: bool) -> None:
    """Checks on the raw flags (no SAE-Lens import): an output that holds a trained SAE."""
    output = last_flag(args, "output_path", "output")
    if not overwrite and output != "None" and holds_trained_sae(Path(output)):
        refuse_trained(Path(output), "--output_path")


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
    if setting == "dataset_path" and type(exc).__name__ in _DATASET_READ_ERRORS:
        return fail(
            f"--dataset_path {value}: cannot be read as a dataset ({type(exc).__name__}: "
            f"{_first_sentence(exc)}); give a text dataset (a column 'text') or a tokenized one"
        )
    return exc


#: ``datasets`` errors for files that are there but are not one dataset.
_DATASET_READ_ERRORS = (
    "DatasetGenerationCastError",
    "DatasetGenerationError",
    "DataFilesNotFoundError",
    "EmptyDatasetError",
)


def _first_sentence(exc: BaseException, limit: int = 160) -> str:
    text = one_line(exc)
    for marker in (". ", "; "):
        if marker in text[:limit]:
            return text[: text.index(marker, 0, limit)]
    return text if len(text) <= limit else text[: limit - 1] + "…"
