"""``sae-lens evaluate``: re-evaluate a trained SAE, or run SAE-Bench on any SAE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from sae_lens_ext.commands._options import IntRange, debug_option

HELP = """Evaluate a trained SAE: on fresh data, or with SAE-Bench (--bench).

\b
Without --bench, PATH is a run folder; writes PATH/evaluation.json:
  a `sae-lens demo` folder (holds demo_data/): fresh samples of the same ground
    truth; generic metrics (MCC, explained variance, L0, dead latents...) and
    every installed plugin's metrics;
  a `sae-lens train` folder, or one written by SAE-Lens's runners (holds
    runner_cfg.json, or its parent does for MultiSAETrainingRunner): SAE-Lens's
    run_evals on the model and dataset it was trained on (KL and CE-loss scores,
    reconstruction, sparsity), and the plugins' metrics on whole sequences of
    the same activations. --model_name, --model_class_name, --dataset_path and
    --device replace what the folder recorded (with or without --bench), e.g.
    for a folder trained on another machine.

\b
With --bench BENCHES (comma-separated; `--bench` alone: core, absorption,
sparse_probing_sae_probes; `--bench all`: every bench), PATH_OR_HUB_ID is a run
folder or a hub SAE `release/sae_id`, evaluated with SAE-Bench's own code.
Results go to --output-dir/<bench>/<release>_<sae_id>_eval_results.json in
SAE-Bench's format, the plugins' metrics to --output-dir/sae_lens_ext/. Unset
settings take SAE-Bench's defaults; a `sae-lens train` folder supplies its model,
model class, dataset and context size. Local models and data work as in
`sae-lens train`: --model_class_name AutoModelForCausalLM --model_name ./dir,
--dataset_path ./dir; --data-dir DIR holds local copies of SAE-Bench's hub
datasets (see docs/sae-bench.md).
"""


#: The SAE-Bench options (model and data flags also under their `sae-lens train` spelling).
BENCH_OPTIONS = [
    click.option(
        "--bench",
        "benches",
        is_flag=False,
        flag_value="default",
        default=None,
        metavar="BENCHES",
        help="SAE-Bench evaluations: core, absorption, sparse_probing, "
        "sparse_probing_sae_probes, scr, tpp (comma-separated), 'default' or 'all'.",
    ),
    click.option(
        "--model-name",
        "--model_name",
        "model_name",
        help="Model (TransformerLens name, hub id or save_pretrained folder).",
    ),
    click.option(
        "--model-class-name",
        "--model_class_name",
        "model_class_name",
        type=click.Choice(["HookedTransformer", "AutoModelForCausalLM"]),
        help="As in `sae-lens train`; a local folder needs AutoModelForCausalLM.",
    ),
    click.option(
        "--dataset",
        "--dataset-path",
        "--dataset_path",
        "dataset",
        help="Core's text dataset: hub id or local path.",
    ),
    click.option("--context-size", "--context_size", "context_size", type=IntRange(min=1)),
    click.option(
        "--batch-size-prompts",
        "batch_size_prompts",
        type=IntRange(min=1),
        help="Core's prompts per batch.",
    ),
    click.option(
        "--llm-batch-size",
        "llm_batch_size",
        type=IntRange(min=1),
        help="Prompts per model batch (absorption, probing, SCR, TPP).",
    ),
    click.option("--sae-batch-size", "sae_batch_size", type=IntRange(min=1)),
    click.option("--device"),
    click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"])),
    click.option("--random-seed", "random_seed", type=int),
    click.option(
        "--data-dir",
        "data_dir",
        type=click.Path(file_okay=False, exists=True),
        help="Folder of local copies of SAE-Bench's hub datasets (<hub id>/).",
    ),
    click.option(
        "--bench-option",
        "bench_options",
        multiple=True,
        metavar="BENCH.FIELD=VALUE",
        help="Any field of a bench's SAE-Bench config, e.g. scr.n_values=2,5,10 (repeatable).",
    ),
    click.option(
        "--output-dir",
        "output_dir",
        type=click.Path(file_okay=False),
        help="Default: PATH/eval_results for a folder, ./eval_results for a hub id.",
    ),
    click.option(
        "--name", help="Release part of the result file names (default: the folder's name)."
    ),
]


#: Options that also apply without --bench (they replace what the run folder recorded):
#: the runner-config key of each.
DATA = {
    "model_name": "model_name",
    "model_class_name": "model_class_name",
    "dataset": "dataset_path",
    "device": "device",
}


def _bench_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(BENCH_OPTIONS):
        f = option(f)
    return f


@click.command(name="evaluate", help=HELP, context_settings={"max_content_width": 100})
@click.argument("path", metavar="PATH_OR_HUB_ID")
@click.option(
    "--samples",
    type=IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Synthetic samples (demo runs) or tokens (LM runs, and the plugins' metrics with "
    "--bench) to evaluate on.",
)
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_bench_options
@debug_option
def evaluate_command(
    path: str, samples: int, seed: int, as_json: bool, benches: str | None, **bench: object
) -> int:
    if benches is None:
        flags = {p.name: p.opts[0] for p in click.get_current_context().command.params}
        given = [flags[k] for k, v in bench.items() if v not in (None, ()) and k not in DATA]
        if given:
            raise click.UsageError(f"{given[0]} needs --bench")
        from sae_lens_ext.run.evaluate import evaluate

        data = {key: bench[k] for k, key in DATA.items() if bench.get(k) is not None}
        return evaluate(path, samples=samples, seed=seed, as_json=as_json, data=data)
    from sae_lens_ext.run.evaluate_bench import BenchOptions, evaluate_bench

    # click gives each option its declared type; BenchOptions' fields are those options
    return evaluate_bench(path, BenchOptions(benches=benches, samples=samples, **bench))  # type: ignore[arg-type]
