"""``sae-lens demo``: the embedded default, an SAE trained on ground-truth synthetic data."""

from __future__ import annotations

import click

from sae_lens_ext.commands._errors import debug_option
from sae_lens_ext.commands._options import run_options

HELP = """Train an SAE on ground-truth synthetic data, offline, and report how well it recovers it.

\b
freq_ordered (default): activations from SAE-Lens's SyntheticModel (Zipfian
  firing probabilities); reports ground-truth MCC, explained variance, L0,
  dead latents and ordering quality (Spearman of latent index vs frequency).
temporal_consistency: synthetic sequences whose features persist over
  positions; trained on whole windows; also reports consistency metrics.
Any other registered training architecture runs on the freq_ordered data.

Writes the SAE (cfg.json, sae_weights.safetensors), metrics.json,
training_log.jsonl and plots/ to --output. Needs no network.
"""


@click.command(name="demo", help=HELP, context_settings={"max_content_width": 100})
@click.option(
    "--architecture",
    default="freq_ordered",
    show_default=True,
    help="Any registered training architecture (see `sae-lens plugins`).",
)
@click.option(
    "-o",
    "--output",
    default="sae-lens-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output folder.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=None,
    help="Training samples (default: 1,000,000; 800,000 tokens for temporal_consistency).",
)
@click.option("--d-in", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--n-features",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Ground-truth features.",
)
@click.option("--d-sae", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Learning rate (default: the architecture's demo setting).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Set a field of the SAE training config, e.g. --set l1_coefficient=2 (repeatable).",
)
@click.option("--eval-samples", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option(
    "--n-checkpoints",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Periodic checkpoints (Ctrl-C always saves one).",
)
@run_options(log_every=20)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="torch CPU threads (0: torch's default). One thread is fastest for these "
    "small matrices on a shared machine.",
)
@debug_option
def demo_command(**options: object) -> int:
    from sae_lens_ext.commands import _demo_impl

    return _demo_impl.demo(**options)  # type: ignore[arg-type]
