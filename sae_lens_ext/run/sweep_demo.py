"""Demo sweeps: each variant is one ``sae-lens demo`` run (:func:`sae_lens_ext.run.demo.demo`)."""

from __future__ import annotations

from typing import Any

from sae_lens_ext.errors import CliError, fail
from sae_lens_ext.run.sweep import DEMO_OPTIONS, Sweep, Variant, begin_variant, interrupted, is_done


def demo_option(variant: Variant, key: str, value: Any) -> Any:
    """A demo option's value from a sweep file, converted and checked as ``sae-lens demo``
    takes the flag (numbers as Python reads them: ``samples: 1e6``, ``lr: 1e-3``)."""
    from sae_lens_ext.run.demo import demo_option_value

    try:
        return demo_option_value(key, value)
    except ValueError as exc:
        raise fail(f"variant {variant.name}: {key}: {value!r}: {exc}") from None


def demo_options(variant: Variant, log_every: int | None, progress: str) -> Any:
    """The variant's :class:`~sae_lens_ext.run.demo.DemoOptions`: demo options by name, every
    other setting as ``--set FIELD=VALUE``."""
    import dataclasses
    import json

    from sae_lens_ext.run.demo import DemoOptions

    values = dataclasses.asdict(DemoOptions())
    values.update(
        output=str(variant.folder),
        overwrite=False,
        resume=False,
        log_every=log_every,
        progress=progress,
    )
    sets = []
    for key, value in variant.settings.items():
        if key in DEMO_OPTIONS:
            values[key] = demo_option(variant, key, value)
        elif key in ("output", "overrides", "resume", "overwrite"):
            raise fail(f"variant {variant.name}: {key} is set by the sweep")
        else:
            sets.append(f"{key}={json.dumps(value)}")
    values["overrides"] = tuple(sets)
    return DemoOptions(**{k: values[k] for k in DemoOptions.__dataclass_fields__})


def plan_demo(sweep: Sweep, log_every: int | None, progress: str) -> dict[str, Any]:
    """Every variant's options, checked (architecture, config fields, sizes) before any runs."""
    from sae_lens_ext.run.demo import plan

    plans = {}
    for variant in sweep.variants:
        options = demo_options(variant, log_every, progress)
        try:
            plan(options)
        except CliError as exc:
            raise fail(f"{sweep.file}: variant {variant.name}: {exc.format_message()}") from exc
        plans[variant.name] = options
    return plans


def train_demo_variants(sweep: Sweep, plans: dict[str, Any]) -> None:
    """Train the variants not done yet, one after the other; an interrupted one resumes
    from its checkpoint (Ctrl-C saves one)."""
    from sae_lens_ext.run.demo import demo
    from sae_lens_ext.run.output import CHECKPOINTS_DIR, complete_checkpoints

    for variant in sweep.variants:
        if is_done(sweep, variant):
            variant.status = "done earlier"
            print(f"sweep: {variant.name}: done, skipped")
            continue
        options = plans[variant.name]
        options.resume = bool(complete_checkpoints(variant.folder / CHECKPOINTS_DIR))
        print(f"sweep: {variant.name}: {'resuming' if options.resume else 'training'}")
        begin_variant(sweep, variant)
        try:
            demo(options)
        except CliError as exc:
            raise interrupted(variant, exc) from exc
        variant.status = "resumed" if options.resume else "trained"
