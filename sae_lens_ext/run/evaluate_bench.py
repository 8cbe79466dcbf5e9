"""``sae-lens evaluate PATH_OR_HUB_ID --bench ...``: SAE-Bench's own evaluations on any
SAE-Lens SAE (:func:`sae_lens_ext.bench.run_bench`), with the plugins' metrics on the same
model's activations written beside SAE-Bench's files.

Settings left unset take SAE-Bench's defaults; a ``sae-lens train`` folder's
``runner_cfg.json`` supplies its model, model class, dataset and context size instead.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_ext.bench import BenchSettings
from sae_lens_ext.errors import fail, one_line
from sae_lens_ext.run.results import BENCH_DIR, training_record

if TYPE_CHECKING:
    pass

#: ``--bench`` given without a value, or ``--bench default``.
DEFAULT = "default"
#: The flags a data error names (see ``BenchDataError.advice``).
CLI_NAMES = {
    "dataset": "--dataset_path PATH",
    "data_dir": "--data-dir DATA_DIR",
    "model": "--model_class_name AutoModelForCausalLM --model_name DIR",
    "dataset_names": "--bench-option {bench}.dataset_names={names}",
}


@dataclass(kw_only=True)
class BenchOptions(BenchSettings):
    """The ``--bench`` options of ``sae-lens evaluate`` (see ``sae-lens evaluate --help``):
    SAE-Bench's settings (``overrides`` from ``bench_options``) and the command's own."""

    benches: str = DEFAULT
    model_class_name: str | None = None
    bench_options: tuple[str, ...] = ()
    output_dir: str | None = None
    name: str | None = None
    samples: int = 100_000


def bench_names(value: str) -> list[str]:
    """``core,absorption`` -> names; ``default`` -> the default set; ``all`` -> every bench."""
    from sae_lens_ext.bench import BENCHES, DEFAULT_BENCHES

    names = [n.strip() for n in value.split(",") if n.strip()]
    if names == [DEFAULT]:
        return list(DEFAULT_BENCHES)
    if names == ["all"]:
        return list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown or not names:
        raise fail(
            f"--bench {value}: unknown bench {', '.join(unknown) or '(none)'}; choose from "
            f"{', '.join(BENCHES)}, or 'default' ({', '.join(DEFAULT_BENCHES)}) or 'all'"
        )
    return names


def check_bench_option_syntax(items: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """``BENCH.FIELD=VALUE`` -> ``(bench, field, raw value)``, checked without importing
    SAE-Bench (a typo is reported at once)."""
    from sae_lens_ext.bench import BENCHES

    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        bench, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise fail(
                f"--bench-option {item!r}: expected BENCH.FIELD=VALUE, e.g. scr.n_values=2,5"
            )
        if bench not in BENCHES:
            raise fail(
                f"--bench-option {item!r}: unknown bench {bench!r}; choose from {', '.join(BENCHES)}"
            )
        out.append((bench, name.strip(), raw))
    return out


def parse_bench_options(items: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``BENCH.FIELD=VALUE`` -> ``{bench: {field: value}}``; values are YAML, and a comma
    list (or a single value for a list field) becomes a list: ``scr.n_values=2,5,10``.
    Each value is checked against the field's type in SAE-Bench's config (numbers as Python
    reads them: ``core.exclude_special_tokens_from_reconstruction``, ``1e-3``...)."""
    import yaml

    from sae_lens_ext.bench import sae_bench_config_class

    overrides: dict[str, dict[str, Any]] = {}
    for (bench, name, raw), item in zip(check_bench_option_syntax(items), items, strict=True):
        hints = typing.get_type_hints(sae_bench_config_class(bench))
        is_list = typing.get_origin(hints.get(name)) in (list, tuple)
        try:
            if raw.strip().startswith(("[", "{")) or not (is_list or "," in raw):
                value = yaml.safe_load(raw)
            else:
                value = [yaml.safe_load(part) for part in raw.split(",") if part.strip()]
        except yaml.YAMLError as exc:
            raise fail(f"--bench-option {item!r}: not a YAML value ({one_line(exc)})") from exc
        if name in hints:
            value = _checked_value(item, value, hints[name])
        overrides.setdefault(bench, {})[name] = value
    return overrides


def _checked_value(item: str, value: Any, annotation: Any) -> Any:
    """``value`` as a field of type ``annotation`` (pydantic, as SAE-Bench's configs
    validate), numbers read as Python reads them; one line naming the option otherwise."""
    import pydantic

    from sae_lens_ext.run.values import NotANumber, coerce, number_kind

    args = typing.get_args(annotation)
    element = args[0] if typing.get_origin(annotation) in (list, tuple) and args else None
    try:
        if isinstance(value, list) and element is not None and number_kind(element):
            value = [coerce(v, element) for v in value]
        else:
            value = coerce(value, annotation)
        pydantic.TypeAdapter(annotation).validate_python(value)  # as the config will
        return value
    except NotANumber as exc:
        raise fail(f"--bench-option {item!r}: {exc}") from None
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        raise fail(
            f"--bench-option {item!r}: expected {_type_name(annotation)} ({first['msg']})"
        ) from None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def runner_defaults(folder: Path) -> dict[str, Any]:
    """Model, model class, dataset and context size a run folder recorded (``sae-lens
    train``, SAE-Lens's runners)."""
    runner = training_record(folder)
    if runner is None:
        return {}
    return {
        "model_name": runner.get("model_name"),
        "model_class_name": runner.get("model_class_name"),
        "dataset": runner.get("dataset_path") or None,
        "context_size": runner.get("context_size"),
    }


def settings_for(target: str, options: BenchOptions) -> tuple[Any, Path]:
    """SAE-Bench settings (unset: the run's recorded settings, then SAE-Bench's defaults)
    and the output folder."""
    from sae_lens_ext.bench import check_benches
    from sae_lens_ext.run.evaluate import check_recorded_paths, refuse_multi_sae_folder
    from sae_lens_ext.run.lm_config import check_device, looks_local

    folder = Path(target)
    local = folder.is_dir()
    if local and (folder / "demo_data").is_dir():
        raise fail(
            f"PATH {target} is an SAE trained on synthetic data (`sae-lens demo`): SAE-Bench "
            "evaluates SAEs of a language model; evaluate it without --bench"
        )
    if local:
        refuse_multi_sae_folder(folder)
    recorded = runner_defaults(folder) if local else {}
    given = ("model_name", "model_class_name", "dataset", "context_size")
    supplied = {k: getattr(options, k) for k in given if getattr(options, k)}
    if recorded:
        record = {"model_name": recorded["model_name"], "dataset_path": recorded["dataset"]}
        names = {"model_name": "model_name", "dataset": "dataset_path"}
        check_recorded_paths(
            folder, record, {names[k] for k in supplied if k in names}, required=False
        )
    merged = {**recorded, **supplied}
    model, model_class = merged.get("model_name"), merged.get("model_class_name")
    if model and Path(model).expanduser().exists() and model_class == "HookedTransformer":
        raise fail(
            f"--model_name {model} is a local folder, which HookedTransformer cannot load; "
            "add --model_class_name AutoModelForCausalLM"
        )
    if model and looks_local(model) and not Path(model).expanduser().exists():
        raise fail(f"--model_name {model}: no such folder (a model saved with save_pretrained)")
    if options.device:
        check_device("device", options.device)
    chosen = {f.name: getattr(options, f.name) for f in dataclasses.fields(BenchSettings)}
    settings = BenchSettings(
        **{
            **chosen,
            "model_name": model,
            "dataset": merged.get("dataset"),
            "context_size": merged.get("context_size"),
            "overrides": parse_bench_options(options.bench_options),
        }
    )
    try:
        check_benches(bench_names(options.benches), settings)
    except ValueError as exc:
        raise fail(f"--bench-option: {one_line(exc)}") from exc
    from sae_lens_ext.run.output import check_creatable

    output_dir = Path(options.output_dir) if options.output_dir else None
    if output_dir is not None:
        check_creatable(output_dir, "--output-dir")
    return settings, output_dir or (folder / BENCH_DIR if local else Path(BENCH_DIR))


def plugin_metrics(samples: int) -> Any:
    """``extra_metrics`` for :func:`~sae_lens_ext.bench.run_bench`: every plugin's
    ``evaluation_metrics`` on ``samples`` tokens of the model's activations at the SAE's
    hook, as whole sequences (core's dataset and context size)."""

    def compute(run: Any) -> dict[str, Any]:
        from sae_bench.evals.core.eval_config import CoreEvalConfig
        from sae_lens.training.activations_store import ActivationsStore

        from sae_lens_ext.data.lm_batches import store_sequences
        from sae_lens_ext.metrics import EvalData, metrics_dict
        from sae_lens_ext.run.report import plugin_metrics

        defaults = CoreEvalConfig()
        context = run.settings.context_size or defaults.context_size
        store = ActivationsStore.from_sae(
            run.model,
            run.sae,
            context_size=context,
            dataset=run.dataset_path(run.settings.dataset or defaults.dataset),
            dataset_trust_remote_code=True,
        )
        sequences = store_sequences(store, samples)
        data = EvalData(sequences, description=f"{run.model_name} {run.sae_hook_name}")
        metrics = plugin_metrics(run.sae, data)
        labels = {m.key: m.label or m.key for m in metrics if m.row() is not None}
        return {**metrics_dict(metrics), "tokens": data.n_rows, "labels": labels}

    return compute


def evaluate_bench(target: str, options: BenchOptions) -> int:
    """The body of ``sae-lens evaluate PATH_OR_HUB_ID --bench ...``."""
    from sae_lens_ext.bench import BenchDataError, ModelTooSmallError, OutOfContextError, run_bench

    benches = bench_names(options.benches)
    check_bench_option_syntax(options.bench_options)  # before SAE-Bench's slow import
    settings, output_dir = settings_for(target, options)
    try:
        paths = run_bench(
            target,
            benches,
            settings,
            output_dir,
            name=options.name,
            extra_metrics=plugin_metrics(options.samples),
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except BenchDataError as exc:
        raise fail(exc.advice(CLI_NAMES)) from exc
    except OutOfContextError as exc:
        raise fail(f"--bench {exc}") from exc
    except ModelTooSmallError as exc:
        rest = [b for b in benches if b != "absorption"]
        fix = f"--bench {','.join(rest)}" if rest else "another --bench"
        raise fail(f"--bench {exc}; leave absorption out ({fix}) or use a larger model") from exc
    print_bench_summary(paths)
    return 0


def print_bench_summary(paths: dict[str, Path]) -> None:
    """One table of every scalar metric, by bench, then the files."""
    import json

    from sae_lens_ext.run.report import print_table
    from sae_lens_ext.run.results import bench_metrics, format_number

    rows = []
    for bench, path in paths.items():
        data = json.loads(path.read_text())
        if bench == "sae_lens_ext":
            values = {k: v for k, v in data["metrics"].items() if isinstance(v, (int, float))}
        else:
            values = bench_metrics(data)
        rows += [(f"{bench}: {key}", format_number(value)) for key, value in values.items()]
    print_table("SAE-Bench results (and the plugins' metrics)", rows)
    for path in paths.values():
        print(path)
