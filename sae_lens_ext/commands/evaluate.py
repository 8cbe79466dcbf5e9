"""``sae-lens evaluate`` and ``sae-lens plots``: re-evaluate a trained SAE, compare runs."""

from __future__ import annotations

import click

from sae_lens_ext.errors import debug_option


@click.command(name="evaluate", context_settings={"max_content_width": 100})
@click.argument("path", type=click.Path(file_okay=False))
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Synthetic samples (demo runs) or tokens (LM runs) to evaluate on.",
)
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@debug_option
def evaluate_command(path: str, samples: int, seed: int, as_json: bool) -> int:
    """Evaluate the trained SAE in PATH on fresh data; also writes PATH/evaluation.json.

    \b
    A `sae-lens demo` folder (holds demo_data/): fresh samples of the same ground
      truth; generic metrics (MCC, explained variance, L0, dead latents...) and every
      installed plugin's metrics.
    A `sae-lens train` folder (holds runner_cfg.json): SAE-Lens's run_evals on the
      model and dataset it was trained on (reconstruction, CE loss, sparsity), and the
      plugins' metrics on whole sequences of the same activations.
    """
    from sae_lens_ext.run.evaluate import evaluate

    return evaluate(path, samples=samples, seed=seed, as_json=as_json)


@click.command(name="plots", context_settings={"max_content_width": 100})
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--output",
    default="comparison",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the plots.",
)
@debug_option
def plots_command(runs: tuple[str, ...], output: str) -> int:
    """Compare runs: training curves of each RUN folder and a bar chart of their metrics.

    Reads training_log.jsonl and metrics.json written by `sae-lens train`/`demo`;
    writes training_curves.png and metrics_comparison.png to --output.
    """
    from sae_lens_ext.run.evaluate import plots

    return plots(list(runs), output)
