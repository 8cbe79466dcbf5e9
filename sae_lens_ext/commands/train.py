"""``sae-lens train``: upstream's language-model training runner, with every upstream flag.

The command is a thin click shell: its own options are parsed by click, every
other argument is handed unchanged to the ``simple_parsing`` parser that
``python -m sae_lens.llm_sae_training_runner`` builds from
``LanguageModelSAERunnerConfig`` and the SAE config chosen by ``--architecture``.
So each upstream option exists under its upstream name, for every registered
architecture (plugins included), and ``--help`` stays fast (no torch import).
"""

from __future__ import annotations

import click

from sae_lens_ext.commands._options import data_streams_option, debug_option, run_options

HELP = """Train an SAE on a language model's activations (upstream SAE-Lens runner).

\b
Every option of upstream's LanguageModelSAERunnerConfig and of the chosen
architecture's training config is accepted under its upstream name, exactly as
`python -m sae_lens.llm_sae_training_runner` takes it, e.g.:
  sae-lens train --architecture standard \\
    --model_class_name AutoModelForCausalLM --model_name ./my-model \\
    --hook_name transformer.h.0 --d_in 64 --d_sae 512 \\
    --dataset_path ./my-text --streaming False --is_dataset_tokenized False \\
    --context_size 32 --training_tokens 200000 --output_path runs/fo
List them all, and the architecture's named presets (slow: imports SAE-Lens), with
  sae-lens train --architecture ARCH --help-options

\b
Differences from the upstream module: wandb is off unless --log_to_wandb True;
checkpoints go to <output_path>/checkpoints (or exactly --checkpoint_path);
losses are written to <output_path>/training_log.jsonl; Ctrl-C saves a
checkpoint that --resume continues from; an output folder holding a trained
SAE is refused unless --overwrite.

\b
Data-parallel on N processes (one SAE; each process a shard of the data):
  torchrun --nproc_per_node N -m sae_lens_ext train <the same flags>
Cached activations (upstream's CacheActivationsRunner output), any architecture:
  --use_cached_activations True --cached_activations_path DIR
"""


@click.command(
    name="train",
    help=HELP,
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "max_content_width": 100,
    },
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML (or JSON) file of upstream option names and values; flags given "
    "on the command line win. Nested `sae:`/`logger:` sections are allowed.",
)
@run_options()
@click.option(
    "--preset",
    default=None,
    metavar="NAME",
    help="Start from a named preset of --architecture's settings (your flags win); "
    "--help-options lists them.",
)
@click.option(
    "--help-options",
    is_flag=True,
    help="List every upstream option for --architecture, and its presets (slow), and exit.",
)
@data_streams_option
@debug_option
@click.argument("upstream_args", nargs=-1, type=click.UNPROCESSED)
def train_command(
    config_file: str | None,
    resume: bool,
    overwrite: bool,
    log_every: int | None,
    progress: str,
    preset: str | None,
    help_options: bool,
    data_streams: int,
    upstream_args: tuple[str, ...],
) -> int:
    from sae_lens_ext.run.lm import train

    return train(
        config_file=config_file,
        args=list(upstream_args),
        resume=resume,
        overwrite=overwrite,
        log_every=log_every,
        progress=progress,
        help_options=help_options,
        data_streams=data_streams,
        preset=preset,
    )
