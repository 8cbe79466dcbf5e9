"""``sae-lens browse``: a static HTML browser of an SAE's latents."""

from __future__ import annotations

import click

from sae_lens_ext.commands._options import debug_option

HELP = """Write a static latent browser of an SAE: open FOLDER/index.html, offline.

\b
RUN_OR_HUB_ID is a run folder (`sae-lens train` or SAE-Lens runner output, any
registered architecture) or a Hub SAE RELEASE/SAE_ID (as `sae-lens evaluate`).
Reads --tokens tokens of the run's dataset in whole contexts through its model
and the SAE (settings from runner_cfg.json, else the SAE's cfg.json; the model
and data options below override them). Per latent: its top-activating contexts
with each token highlighted, an activation histogram, its firing frequency and
rank, and the tokens its decoder direction promotes through the unembedding
(residual-stream hooks). The index jumps by latent, by rank and by token; plugins
add panels. Memory stays bounded whatever --tokens (docs/browse.md).
"""


@click.command(name="browse", help=HELP, context_settings={"max_content_width": 100})
@click.argument("run", metavar="RUN_OR_HUB_ID")
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    help="Folder of the browser (default: RUN/browser; ./browser for a Hub id).",
)
@click.option(
    "--latents",
    metavar="SPEC",
    help="Latents to browse: START:END ranges and numbers, comma-separated (0:200,512), or "
    "'all'. Default: the first 1,000.",
)
@click.option(
    "--tokens",
    type=click.IntRange(min=1),
    default=1_000_000,
    show_default=True,
    help="Tokens to read (fewer if the dataset ends first).",
)
@click.option(
    "--contexts",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Top-activating contexts kept per latent.",
)
@click.option(
    "--export",
    type=click.Choice(["neuronpedia"]),
    multiple=True,
    help="Also write FOLDER/neuronpedia/: SAEDashboard's batch files, which Neuronpedia imports.",
)
@click.option("--overwrite", is_flag=True, help="Replace a browser already in the folder.")
@click.option(
    "--progress",
    type=click.Choice(["auto", "bar", "plain", "none"]),
    default="auto",
    show_default=True,
    help="A rich bar on a terminal, plain lines otherwise (auto).",
)
@click.option("--model-name", "--model_name", "model_name", help="Model (hub name or folder).")
@click.option(
    "--model-class-name",
    "--model_class_name",
    "model_class_name",
    type=click.Choice(["HookedTransformer", "AutoModelForCausalLM"]),
    help="As in `sae-lens train` (used for hooks TransformerLens does not name).",
)
@click.option(
    "--dataset",
    "--dataset-path",
    "--dataset_path",
    "dataset",
    help="Text dataset: hub id or local path (default: the run's).",
)
@click.option(
    "--context-size",
    "--context_size",
    "context_size",
    type=click.IntRange(min=1),
    help="Tokens per context (default: the run's).",
)
@click.option("--device", help="Default: cuda when available, else cpu.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default="float32",
    show_default=True,
    help="The model's dtype.",
)
@debug_option
def browse_command(run: str, export: tuple[str, ...], **options: object) -> int:
    from sae_lens_ext.browse.build import BrowseOptions, browse

    return browse(run, BrowseOptions(export=export, **options))  # type: ignore[arg-type]
