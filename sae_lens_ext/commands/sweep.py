"""``sae-lens sweep``: train and evaluate a ladder or grid of variants (click only: cheap)."""

from __future__ import annotations

import click

from sae_lens_ext.commands._options import debug_option, progress_options

HELP = """Train and evaluate a ladder or grid of variants on the same data, resumably.

\b
SWEEP is a YAML file: `kind:` demo (synthetic data, `sae-lens demo` options)
or train (a language model, `sae-lens train` options), `base:` settings, then
`variants:` (a list; each has a name and its changes, `extends:` another
variant) and/or `grid:` (setting -> values), optionally `seeds:` and, for
train sweeps, `evaluate:` (samples, SAE-Bench benches). See docs/sweep.md and
the examples in sweeps/.

\b
Each variant trains into OUTPUT/<name>/ (a complete run folder once cfg.json is
there). Rerunning skips finished variants, resumes an interrupted one from its
checkpoint and evaluates what is missing. Variants of a train sweep that differ
only in their SAE config share one pass over the model's activations. Writes
OUTPUT/results.csv and OUTPUT/results.md (every variant's metrics); draw the
figures with `sae-lens compare OUTPUT/*/`.
"""


@click.command(name="sweep", help=HELP, context_settings={"max_content_width": 100})
@click.argument("sweep_file", metavar="SWEEP", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder (default: the file's `output:`, else runs/<file name>).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change a base setting of every variant, e.g. --set samples=200000 (repeatable).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="List the variants, what is done and the shared passes; train nothing.",
)
@progress_options(log_file="each variant's training_log.jsonl")
@debug_option
def sweep_command(
    sweep_file: str,
    output: str | None,
    sets: tuple[str, ...],
    dry_run: bool,
    log_every: int | None,
    progress: str,
) -> int:
    from sae_lens_ext.run.sweep_run import run_sweep

    return run_sweep(
        sweep_file,
        output=output,
        sets=sets,
        dry_run=dry_run,
        log_every=log_every,
        progress=progress,
    )
