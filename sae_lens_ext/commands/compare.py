"""``sae-lens compare`` (and its alias ``plots``): the logs' figures and a results table."""

from __future__ import annotations

import click

from sae_lens_ext.commands._options import debug_option

HELP = """Compare runs: the research logs' figures and one results table, from saved results.

\b
Reads each RUN folder (sae-lens demo/train output; a sweep's output folder stands
for its variants; evaluation.json and
SAE-Bench results under RUN/eval_results from `sae-lens evaluate`) and writes to
--output: training_loss_comparison.png, reconstruction_metrics.png,
metrics_comparison.png, absorption_metrics.png, scr_threshold_comparison.png,
training_curves.png, all_metrics.png (every metric in the runs' tables),
every plugin's figures of the runs (some per run, in <run>/), results.csv and
results.md. A figure no run has data for is skipped (the reason is printed);
a run lacking a metric is marked n/a. Runs that differ only in their seed get
seed_consistency.md (decoder rows matched by the Hungarian algorithm).
`sae-lens plots` is the same command.
"""


def _command(name: str, short_help: str | None = None) -> click.Command:
    @click.command(
        name=name, help=HELP, short_help=short_help, context_settings={"max_content_width": 100}
    )
    @click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
    @click.option(
        "-o",
        "--output",
        default="comparison",
        show_default=True,
        type=click.Path(file_okay=False),
        help="Folder for the figures and tables.",
    )
    @debug_option
    def command(runs: tuple[str, ...], output: str) -> int:
        from sae_lens_ext.run.compare import compare

        return compare(list(runs), output)

    return command


compare_command = _command("compare")
plots_command = _command("plots", "The same as `sae-lens compare` (its former name).")
