"""``sae-lens sweep``: check every variant, then train, evaluate and tabulate them.

The sweep file and its variants' folders are :mod:`sae_lens_ext.run.sweep`; demo variants
train through :mod:`sae_lens_ext.run.sweep_demo`, language-model variants through
:mod:`sae_lens_ext.run.sweep_lm`. This module is the one that imports all three.
"""

from __future__ import annotations

from sae_lens_ext.run.sweep import Sweep, Variant, is_done, load_sweep


def run_sweep(
    path: str,
    *,
    output: str | None = None,
    sets: tuple[str, ...] = (),
    dry_run: bool = False,
    log_every: int | None = None,
    progress: str = "auto",
) -> int:
    """The body of ``sae-lens sweep``."""
    sweep = load_sweep(path, output, sets)
    from sae_lens_ext.run.output import check_creatable

    check_creatable(sweep.output, "--output")
    # every variant (and the evaluation settings) is checked before anything is written
    if sweep.kind == "demo":
        from sae_lens_ext.run.sweep_demo import plan_demo, train_demo_variants

        plans = plan_demo(sweep, log_every, progress)
        if dry_run:
            return print_plan(sweep, [[v] for v in sweep.variants])
        write_sweep_record(sweep)
        train_demo_variants(sweep, plans)
    else:
        from sae_lens_ext.run.sweep_lm import (
            evaluate_lm_variants,
            evaluation_plan,
            group_lm,
            train_lm_variants,
        )

        groups = group_lm(sweep)
        evaluation = evaluation_plan(sweep)
        if dry_run:
            return print_plan(sweep, [[v for v, _ in g] for g in groups])
        write_sweep_record(sweep)
        train_lm_variants(sweep, groups, log_every, progress)
        evaluate_lm_variants(sweep, evaluation)
    write_sweep_results(sweep)
    return 0


def print_plan(sweep: Sweep, groups: list[list[Variant]]) -> int:
    print(f"{sweep.file}: {len(sweep.variants)} variants ({sweep.kind}) -> {sweep.output}/")
    for group in groups:
        shared = f"  (one pass over the activations for {len(group)})" if len(group) > 1 else ""
        for variant in group:
            done = "done" if is_done(sweep, variant) else "to train"
            print(f"  {variant.name:<24} {done:<9} {variant.step}{shared}")
            shared = "  (same pass)" if shared else ""
    return 0


def write_sweep_results(sweep: Sweep) -> None:
    """``results.csv``/``results.md`` of every finished variant, and ``sweep.json``."""
    from sae_lens_ext.run.results import read_results, write_results_table

    done = [v for v in sweep.variants if (v.folder / "cfg.json").is_file()]
    runs = [read_results(v.folder, v.name) for v in done]
    extra = {v.name: {"changes": v.step, "status": v.status} for v in done}
    csv_path, md_path = write_results_table(runs, sweep.output, extra=extra)
    write_sweep_record(sweep)
    print(md_path.read_text())
    print(f"results: {csv_path} and {md_path}")


def write_sweep_record(sweep: Sweep) -> None:
    """``OUTPUT/sweep.json``: the file, and each variant's changes, settings and status
    (``sae-lens compare OUTPUT`` reads the variants from it)."""
    from sae_lens_ext.run.output import write_json

    sweep.output.mkdir(parents=True, exist_ok=True)
    variants = [
        {"name": v.name, "step": v.step, "settings": v.settings, "status": v.status}
        for v in sweep.variants
    ]
    write_json(
        sweep.output / "sweep.json",
        {"file": str(sweep.file), "kind": sweep.kind, "variants": variants},
    )
