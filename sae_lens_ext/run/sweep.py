"""``sae-lens sweep sweep.yaml``: train and evaluate a ladder or grid of variants, resumably.

The sweep file (YAML) names the data once and the variants as changes to it::

    kind: demo                 # demo: synthetic data (`sae-lens demo` options)
                               # train: a language model (`sae-lens train` options)
    output: runs/ladder        # default: runs/<file name>
    base:                      # settings every variant starts from
      samples: 400000
    variants:                  # a ladder: each is base + its own settings
      - name: baseline
        architecture: standard
      - name: mine
        architecture: my_architecture
      - name: mine-warm
        extends: mine          # start from another variant's settings instead of base
        l1_warm_up_steps: 100
    grid:                      # and/or a grid: one variant per combination
      l1_coefficient: [0.5, 1.0]
      d_sae: [256, 512]
    grid_names: {l1_coefficient: l1-, d_sae: w}   # names like l1-0.5_w256
    seeds: [0, 1]              # every variant once per seed (names end in -s0, -s1)
    evaluate:                  # train sweeps: `sae-lens evaluate` settings
      samples: 20000
      bench: [core]            # SAE-Bench benches, as `sae-lens evaluate --bench`
      bench_options: {core: {n_eval_reconstruction_batches: 5}}
    share_activations: true    # train sweeps: one pass over the activations per group

Settings are the options of ``sae-lens demo`` (any other key is a field of the SAE's
training config, as ``--set``) or of ``sae-lens train`` (upstream names, ``sae:`` sections
allowed); ``preset: NAME`` starts a variant from a named preset of its architecture (its
other settings win). Each variant trains into ``OUTPUT/<name>/``, a complete run folder once its
``cfg.json`` is there; a rerun skips finished variants, resumes an interrupted one from its
checkpoint, and evaluates what has not been evaluated. ``OUTPUT/results.csv`` and
``results.md`` hold every variant's metrics.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens_ext.errors import INTERRUPTED, CliError, fail, one_line, read_mapping
from sae_lens_ext.run.values import check_assignments, split_assignment

SWEEP_KEYS = {
    "kind",
    "output",
    "base",
    "variants",
    "grid",
    "grid_names",
    "seeds",
    "evaluate",
    "share_activations",
    "description",
}
VARIANT_FILE = "sweep_variant.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
#: Options of ``sae-lens demo`` a demo sweep may set (any other key is an SAE config field).
DEMO_OPTIONS = (
    "architecture",
    "samples",
    "d_in",
    "n_features",
    "d_sae",
    "batch_size",
    "lr",
    "seed",
    "data_seed",
    "eval_samples",
    "n_checkpoints",
    "device",
    "threads",
    "preset",
)
#: Keys of ``evaluate:`` besides the ``sae-lens evaluate --bench`` options.
EVALUATE_KEYS = ("samples", "bench", "bench_options")


@dataclass
class Variant:
    """One variant: its name, its own changes (for the results table) and all settings."""

    name: str
    changes: dict[str, Any]
    settings: dict[str, Any]
    step: str = ""  # what this variant changes, as the file says it ("warm-up + k=v")
    folder: Path = Path()
    status: str = ""


@dataclass
class Sweep:
    """A parsed sweep file (see the module docstring)."""

    file: Path
    kind: str
    output: Path
    variants: list[Variant]
    evaluate: dict[str, Any] = field(default_factory=dict)
    share_activations: bool = True


# --- the file ---------------------------------------------------------------------------------


def load_sweep(path: str, output: str | None = None, sets: tuple[str, ...] = ()) -> Sweep:
    """Parse and expand a sweep file; ``sets`` (``KEY=VALUE``) change ``base``."""
    file = Path(path)
    check_assignments(sets, "--set", "KEY=VALUE, e.g. --set samples=200000")
    spec = read_mapping(path, "SWEEP", "a mapping with base: and variants: or grid:")
    unknown = sorted(set(spec) - SWEEP_KEYS)
    if unknown:
        raise fail(
            f"{path}: unknown key {unknown[0]!r}; a sweep has {', '.join(sorted(SWEEP_KEYS))}"
        )
    kind = spec.get("kind", "demo")
    if kind not in ("demo", "train"):
        raise fail(f"{path}: kind: {kind!r}; use demo (synthetic data) or train (a language model)")
    base = _flat(_mapping(spec.get("base") or {}, f"{path}: base"), f"{path}: base")
    base.update(_parse_sets(sets))
    variants = expand(spec, base, path)
    evaluate = _mapping(spec.get("evaluate") or {}, f"{path}: evaluate")
    if kind == "demo" and evaluate:
        raise fail(
            f"{path}: evaluate: applies to train sweeps (demo runs are evaluated against "
            "their ground truth as they train)"
        )
    out = Path(output or spec.get("output") or Path("runs") / file.stem)
    for variant in variants:
        variant.folder = out / variant.name
    return Sweep(file, kind, out, variants, evaluate, bool(spec.get("share_activations", True)))


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"{where}: expected a mapping of settings")
    return dict(value)


def _flat(settings: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``sae:``/``logger:`` sections flattened (as ``sae-lens train --config``), ``-`` -> ``_``."""
    from sae_lens_ext.run.lm_config import flatten_sections

    flat = flatten_sections(settings, where or "sweep file")
    return {key.replace("-", "_"): value for key, value in flat.items()}


def _parse_sets(items: tuple[str, ...]) -> dict[str, Any]:
    """``--set KEY=VALUE`` (values are YAML; numbers are converted to their field's type
    where the variant's run reads them, see :mod:`sae_lens_ext.run.values`)."""
    import yaml

    out = {}
    for item in items:
        key, raw = split_assignment(item, "--set", "KEY=VALUE, e.g. --set samples=200000")
        try:
            out[key.replace("-", "_")] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise fail(f"--set {item!r}: not a YAML value ({one_line(exc)})") from exc
    return out


def expand(spec: dict[str, Any], base: dict[str, Any], path: str) -> list[Variant]:
    """The variants of ``variants:`` (with ``extends:``) and ``grid:``, times ``seeds:``."""
    variants: list[Variant] = []
    by_name: dict[str, Variant] = {}
    entries = spec.get("variants") or []
    if not isinstance(entries, list):
        raise fail(f"{path}: variants: expected a list of mappings, each with a name")
    for i, entry in enumerate(entries):
        entry = _flat(_mapping(entry, f"{path}: variants[{i}]"), f"{path}: variants[{i}]")
        name, parent = entry.pop("name", None), entry.pop("extends", None)
        if name is None or str(name).strip() == "":
            described = f" ({_describe(entry)})" if entry else ""
            raise fail(
                f"{path}: variants[{i}]{described} has no name; give it one (name: ..., "
                "letters, digits and . _ - + =): it names the variant's folder and table row"
            )
        if parent is not None and parent not in by_name:
            raise fail(
                f"{path}: variant {name!r} extends {parent!r}, which is not an earlier variant"
            )
        start = by_name[parent] if parent is not None else None
        changes = {**(start.changes if start else {}), **entry}
        step = (f"{parent} + " if parent else "") + _describe(entry)
        settings = {**(start.settings if start else base), **entry}
        variant = Variant(str(name), changes, settings, step)
        by_name[variant.name] = variant
        variants.append(variant)
    variants += grid_variants(spec, base, path)
    if not variants:
        raise fail(f"{path}: no variants: give variants: (a list) or grid: (field -> values)")
    variants = with_seeds(variants, spec.get("seeds"), path, spec.get("kind", "demo"))
    names = [v.name for v in variants]
    for name in names:
        if not NAME.match(name):
            raise fail(f"{path}: variant name {name!r}: use letters, digits and . _ - + = only")
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise fail(f"{path}: two variants are named {duplicate!r}")
    return variants


def grid_variants(spec: dict[str, Any], base: dict[str, Any], path: str) -> list[Variant]:
    grid = _flat(_mapping(spec.get("grid") or {}, f"{path}: grid"), f"{path}: grid")
    short = _mapping(spec.get("grid_names") or {}, f"{path}: grid_names")
    if not grid:
        return []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise fail(f"{path}: grid: {key}: expected a non-empty list of values")
    out = []
    for combination in itertools.product(*grid.values()):
        changes = dict(zip(grid, combination, strict=True))
        name = "_".join(f"{short.get(k, k)}{_text(v)}" for k, v in changes.items())
        out.append(Variant(name, changes, {**base, **changes}, _describe(changes)))
    return out


def _describe(changes: dict[str, Any]) -> str:
    return "; ".join(f"{k}={_text(v)}" for k, v in changes.items()) or "base"


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def with_seeds(variants: list[Variant], seeds: Any, path: str, kind: str) -> list[Variant]:
    """Each variant once per seed; demo data keep one ground truth (``data_seed``: the
    variant's ``seed`` setting, default 0), so that only the SAE's seed differs."""
    if seeds is None:
        return variants
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds:
        raise fail(f"{path}: seeds: expected a list of integers")
    out = []
    for variant, seed in itertools.product(variants, seeds):
        fixed = {"data_seed": variant.settings.get("seed", 0)} if kind == "demo" else {}
        settings = {**fixed, **variant.settings, "seed": seed}
        name, step = f"{variant.name}-s{seed}", f"{variant.step}; seed={seed}"
        out.append(Variant(name, {**variant.changes, "seed": seed}, settings, step))
    return out


# --- state of a variant folder ---------------------------------------------------------------


def variant_record(sweep: Sweep, variant: Variant) -> dict[str, Any]:
    return {"kind": sweep.kind, "name": variant.name, "settings": variant.settings}


def is_done(sweep: Sweep, variant: Variant) -> bool:
    """Whether the variant's folder holds its trained SAE; refuses a folder trained with
    other settings (the sweep file changed) rather than mixing results."""
    from sae_lens_ext.errors import holds_trained_sae

    record_path = variant.folder / VARIANT_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    wanted = json.loads(json.dumps(variant_record(sweep, variant), default=str))
    if record is not None and record != wanted:
        old, new = record.get("settings", {}), wanted["settings"]
        key = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        raise fail(
            f"variant {variant.name}: {variant.folder} was made with other settings ({key}: "
            f"{old.get(key)!r} there, {new.get(key)!r} now); remove the folder to redo it, or "
            "give the variant another name"
        )
    if holds_trained_sae(variant.folder) and record is None:
        raise fail(
            f"variant {variant.name}: {variant.folder} holds an SAE this sweep did not "
            "train; choose another output folder"
        )
    return holds_trained_sae(variant.folder)


def begin_variant(sweep: Sweep, variant: Variant) -> None:
    """Record the variant's settings in its folder before it trains."""
    from sae_lens_ext.run.output import write_json

    variant.folder.mkdir(parents=True, exist_ok=True)
    write_json(variant.folder / VARIANT_FILE, variant_record(sweep, variant))


# --- a variant that stops ----------------------------------------------------------------------


def interrupted(variant: Variant, exc: CliError) -> CliError:
    """The one line a sweep stops with when a variant fails or is interrupted. A sweep takes
    no ``--resume``: rerunning the same command skips finished variants and resumes an
    interrupted one from its checkpoint (a shared pass, which keeps none, starts again)."""
    if exc.exit_code != INTERRUPTED:
        return CliError(f"variant {variant.name}: {exc.format_message()}", exc.exit_code)
    cause = exc.__cause__
    step, checkpoint = getattr(cause, "step", None), getattr(cause, "checkpoint", None)
    where = f"after step {step}" if step is not None else "before its first step"
    if checkpoint is not None:
        state, then = f"checkpoint saved to {checkpoint}", "this one resumes from its checkpoint"
    else:
        state, then = "no checkpoint saved", "this one trains again from the start"
    return CliError(
        f"sweep interrupted in variant {variant.name} {where} ({state}); rerun the same sweep "
        f"command to continue: finished variants are skipped, {then}",
        INTERRUPTED,
    )
