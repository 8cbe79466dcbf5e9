"""``sae-lens compare`` (alias ``plots``): the research logs' figures and one results table
from saved run folders, and the seed-to-seed consistency of runs that differ only in seed.

Everything is read from the folders (:mod:`sae_lens_ext.run.results`); nothing is
retrained or re-evaluated. A figure whose metrics no run has is skipped with a line that
says which command produces them; inside a figure, a run without a metric is marked "n/a".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sae_lens_ext.run.results import RunResults, read_runs, write_results_table


def _has(runs: Sequence[RunResults], *keys: str) -> bool:
    return any(run.value(*keys) is not None for run in runs)


def comparison_figures(
    runs: Sequence[RunResults],
) -> list[tuple[str, Callable[[], Any] | None, str]]:
    """``(file name, builder or None, why skipped)`` for each comparison figure."""
    from sae_lens_ext.run import figures as f

    core = "run `sae-lens evaluate RUN` or `sae-lens evaluate RUN --bench core`"
    plan = [
        (
            "training_loss_comparison.png",
            _has(runs, "final_loss"),
            lambda: f.build_training_loss_comparison(runs),
            "no run has a training log",
        ),
        (
            "reconstruction_metrics.png",
            _has(runs, "core.kl_div_score", "kl_div_score", "core.cossim", "cossim"),
            lambda: f.build_reconstruction_metrics(runs),
            f"no KL score or cosine: {core}",
        ),
        (
            "metrics_comparison.png",
            _has(runs, "core.explained_variance", "explained_variance", "core.l0", "l0"),
            lambda: f.build_metrics_comparison(runs),
            f"no reconstruction or sparsity metrics: {core}",
        ),
        (
            "absorption_metrics.png",
            _has(runs, "absorption.mean_absorption_fraction_score"),
            lambda: f.build_absorption_metrics(runs),
            "no absorption results: `sae-lens evaluate RUN --bench absorption`",
        ),
        (
            "scr_threshold_comparison.png",
            bool(f.scr_thresholds(runs, "scr_metric_threshold_")),
            lambda: f.build_scr_threshold_comparison(runs),
            "no SCR results: `sae-lens evaluate RUN --bench scr`",
        ),
        (
            "training_curves.png",
            any(r.log for r in runs),
            lambda: f.build_training_curves({r.name: r.log for r in runs if r.log}),
            "no run has a training log",
        ),
    ]
    return [(name, build if ok else None, why) for name, ok, build, why in plan]


def all_metric_keys(runs: Sequence[RunResults]) -> list[tuple[str, str]]:
    """The metrics in any run's table (its ``labels``), first seen first."""
    keys: dict[str, str] = {}
    for run in runs:
        for key, label in run.labels.items():
            keys.setdefault(key, label)
    return list(keys.items())


def write_figures(runs: Sequence[RunResults], out: Path) -> list[Path]:
    """Every comparison figure that has data, ``all_metrics.png`` (every labelled metric,
    the plugins' included) and every plugin's ``compare_figures``."""
    from sae_lens_ext.plugins import call_each_list
    from sae_lens_ext.run import figures as f

    written: list[Path] = []
    for name, build, why in comparison_figures(runs):
        if build is None:
            print(f"skipped {name}: {why}")
            continue
        written.append(f.save_figure(build(), out / name))
    keys = all_metric_keys(runs)
    if keys:
        metrics = {r.name: r.values for r in runs}
        written.append(f.plot_metric_bars(metrics, keys, out / "all_metrics.png"))
    return written + call_each_list("compare_figures", Path, runs=list(runs), folder=out)


def seed_pairs(runs: Sequence[RunResults]) -> list[tuple[RunResults, RunResults]]:
    """Pairs of runs whose training differs only in the seed."""
    by_signature: dict[str, list[RunResults]] = {}
    for run in runs:
        signature = run.training_signature()
        if signature is not None and run.seed() is not None:
            by_signature.setdefault(signature, []).append(run)
    return [
        (a, b)
        for group in by_signature.values()
        for a, b in itertools.combinations(group, 2)
        if a.seed() != b.seed()
    ]


def seed_consistency_rows(runs: Sequence[RunResults]) -> list[dict[str, Any]]:
    """:func:`~sae_lens_ext.metrics.seed_consistency` of every pair of :func:`seed_pairs`."""
    from sae_lens_ext.metrics import seed_consistency
    from sae_lens_ext.run.output import load_saved_sae

    rows = []
    for a, b in seed_pairs(runs):
        result = seed_consistency(load_saved_sae(a.folder), load_saved_sae(b.folder))
        rows.append(
            {"run_a": a.name, "run_b": b.name, "seed_a": a.seed(), "seed_b": b.seed(), **result}
        )
    return rows


def write_seed_consistency(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    if not rows:
        return []
    from sae_lens_ext.run.output import write_json

    json_path, md_path = out / "seed_consistency.json", out / "seed_consistency.md"
    write_json(json_path, rows)
    threshold = rows[0]["threshold"]
    lines = [
        f"| run A | run B | seeds | mean matched decoder cosine | share of latents > {threshold}"
        " | Spearman of matched indices |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['run_a']} | {r['run_b']} | {r['seed_a']}, {r['seed_b']} | "
        f"{r['mean_matched_cosine']:.3f} | {r['share_above']:.3f} | {r['index_spearman']:.3f} |"
        for r in rows
    ]
    md_path.write_text("\n".join(lines) + "\n")
    return [json_path, md_path]


def compare(runs: list[str], output: str) -> int:
    """The body of ``sae-lens compare`` (and its alias ``plots``). Everything is written
    into a staged folder first: a run that cannot be read leaves ``output`` as it was."""
    from sae_lens_ext.run.output import check_creatable, staged_folder

    out = Path(output)
    check_creatable(out, "--output")
    results = read_runs([Path(r) for r in runs])
    with staged_folder(out) as tmp:
        written = write_figures(results, tmp)
        written += write_results_table(results, tmp)
        consistency = seed_consistency_rows(results)
        written += write_seed_consistency(consistency, tmp)
    for row in consistency:
        print(
            f"seed consistency {row['run_a']} vs {row['run_b']}: mean matched cosine "
            f"{row['mean_matched_cosine']:.3f}, {row['share_above']:.1%} of latents "
            f"above {row['threshold']}, Spearman of matched indices {row['index_spearman']:.3f}"
        )
    for path in written:
        print(out / path.relative_to(tmp))
    return 0
