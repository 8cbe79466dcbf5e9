"""``sae-lens demo``: the embedded default, an SAE trained on ground-truth synthetic data."""

from __future__ import annotations

import click

from sae_lens_ext.commands._options import IntRange, data_streams_option, debug_option, run_options
from sae_lens_ext.run.demo import DEMO_MINIMUM, DemoOptions

DEFAULT = DemoOptions()  # the defaults, defined with the options

HELP = """Train an SAE on ground-truth synthetic data, offline, and report how well it recovers it.

\b
Any registered training architecture (see `sae-lens plugins`). Its plugin may
choose the data (e.g. sequences whose features persist over positions), the
config defaults, and extra metrics and figures; without them the SAE trains
on SAE-Lens's SyntheticModel (Zipfian firing probabilities) and reports
ground-truth MCC, explained variance, L0, dead latents, shrinkage and more.

Writes the SAE (cfg.json, sae_weights.safetensors), metrics.json,
training_log.jsonl, plots/ and the data's ground truth (demo_data/) to
--output (default ./sae-lens-demo-ARCHITECTURE), so `sae-lens evaluate` can draw
fresh data later. Needs no network.

\b
Data-parallel on N processes (one SAE, each process a block of every batch):
  torchrun --nproc_per_node N -m sae_lens_ext demo ...
"""


@click.command(name="demo", help=HELP, context_settings={"max_content_width": 100})
@click.option(
    "--architecture",
    default=None,
    help="Any registered training architecture (see `sae-lens plugins`); default: the "
    "one a plugin names as the demo default.",
)
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(file_okay=False),
    help="Output folder (default: ./sae-lens-demo-ARCHITECTURE, one per architecture). "
    "A folder that holds a trained SAE is never overwritten without --overwrite.",
)
@click.option(
    "--samples",
    type=IntRange(min=DEMO_MINIMUM["samples"]),
    default=DEFAULT.samples,
    help="Training samples (default: the architecture's demo setting, else 1,000,000).",
)
@click.option(
    "--d-in", type=IntRange(min=DEMO_MINIMUM["d_in"]), default=DEFAULT.d_in, show_default=True
)
@click.option(
    "--n-features",
    type=IntRange(min=DEMO_MINIMUM["n_features"]),
    default=DEFAULT.n_features,
    show_default=True,
    help="Ground-truth features.",
)
@click.option(
    "--d-sae", type=IntRange(min=DEMO_MINIMUM["d_sae"]), default=DEFAULT.d_sae, show_default=True
)
@click.option(
    "--batch-size",
    type=IntRange(min=DEMO_MINIMUM["batch_size"]),
    default=DEFAULT.batch_size,
    show_default=True,
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT.lr,
    help="Learning rate (default: the architecture's demo setting).",
)
@click.option(
    "--seed",
    type=int,
    default=DEFAULT.seed,
    show_default=True,
    help="Seed of the SAE's initialisation and of the batches (and of the data, unless "
    "--data-seed is given).",
)
@click.option(
    "--data-seed",
    type=int,
    default=DEFAULT.data_seed,
    help="Seed of the synthetic ground truth (default: --seed); keep it fixed and change "
    "--seed to train the same SAE on the same data with another initialisation.",
)
@click.option(
    "--preset",
    default=None,
    metavar="NAME",
    help="Start from a named preset of the architecture's settings (--set wins); list "
    "them with `sae-lens train --architecture ARCH --help-options`.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Set a field of the SAE training config, e.g. --set l1_coefficient=1e-3, or of "
    "upstream's trainer config, e.g. --set dead_feature_window=20 (repeatable).",
)
@click.option(
    "--eval-samples",
    type=IntRange(min=DEMO_MINIMUM["eval_samples"]),
    default=DEFAULT.eval_samples,
    show_default=True,
    help="Fresh samples the metrics are computed on (dead latents: on the first 100,000).",
)
@click.option(
    "--n-checkpoints",
    type=IntRange(min=DEMO_MINIMUM["n_checkpoints"]),
    default=DEFAULT.n_checkpoints,
    show_default=True,
    help="Periodic checkpoints (Ctrl-C always saves one).",
)
@run_options()
@click.option("--device", default=DEFAULT.device, show_default=True)
@click.option(
    "--threads",
    type=IntRange(min=DEMO_MINIMUM["threads"]),
    default=DEFAULT.threads,
    show_default=True,
    help="torch CPU threads (0: torch's default). One thread is fastest for these "
    "small matrices on a shared machine.",
)
@data_streams_option
@debug_option
def demo_command(**options: object) -> int:
    from sae_lens_ext.run.demo import demo

    # click gives each option its declared type; DemoOptions' fields are those options
    return demo(DemoOptions(**options))  # type: ignore[arg-type]
