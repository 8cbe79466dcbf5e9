"""Run folders, wherever they are and whoever wrote them: ``sae-lens train`` folders record
absolute paths (``evaluate`` works from another directory and after the folder moved);
``evaluate`` takes ``--model_name``/``--dataset_path`` instead of what a folder recorded,
with and without ``--bench``; ``evaluate`` and ``compare`` accept the folders SAE-Lens's own
runners write (the LLM runner, on tokens and on cached activations, and
``MultiSAETrainingRunner``); short runs log enough to draw and write ``plots/``.

Everything runs through ``sae-lens``'s entry point in fresh offline interpreters, on the
offline world of ``tests/bench_world.py`` (a tiny model and SAE-Bench's datasets)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from tests.bench_world import World, build_world
from tests.helpers import TinyLM, run_cli_commands, run_module, run_python

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

ENV = {"OMP_NUM_THREADS": "1"}
OWT = "data/Skylion007/openwebtext"
#: The docs' flags for a short run (no --n_batches_for_norm_estimate, no --log-every).
TRAIN = [
    "train", "--architecture", "freq_ordered", "--model_class_name", "AutoModelForCausalLM",
    "--model_name", "./model", "--hook_name", "transformer.h.0", "--d_in", "64",
    "--d_sae", "128", "--dataset_path", f"./{OWT}", "--streaming", "False",
    "--is_dataset_tokenized", "False", "--context_size", "32", "--training_tokens", "12544",
    "--train_batch_size_tokens", "256", "--normalize_activations", "expected_average_only_in",
    "--progress", "plain",
]  # fmt: skip
UPSTREAM = [
    "-m", "sae_lens.llm_sae_training_runner", "--model_class_name", "AutoModelForCausalLM",
    "--model_name", "./model", "--hook_name", "transformer.h.0", "--d_in", "64",
    "--d_sae", "128", "--dataset_path", f"./{OWT}", "--streaming", "False",
    "--is_dataset_tokenized", "False", "--context_size", "32", "--training_tokens", "8192",
    "--train_batch_size_tokens", "256", "--store_batch_size_prompts", "8",
    "--n_batches_in_buffer", "32", "--device", "cpu", "--log_to_wandb", "False",
    "--n_checkpoints", "0", "--checkpoint_path", "upstream-checkpoints",
]  # fmt: skip
MULTI = """
from sae_lens import LoggingConfig, StandardTrainingSAEConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig
from sae_lens.registry import get_sae_training_class

ordered = get_sae_training_class("freq_ordered")[1](d_in=64, d_sae=128)
cfg = MultiSAETrainingRunnerConfig(
    saes={"std": StandardTrainingSAEConfig(d_in=64, d_sae=128), "fo": ordered},
    hook_names="transformer.h.0", model_name="./model", model_class_name="AutoModelForCausalLM",
    dataset_path="./data/Skylion007/openwebtext", streaming=False, context_size=32,
    training_tokens=8192, train_batch_size_tokens=256, store_batch_size_prompts=8,
    n_batches_in_buffer=32, logger=LoggingConfig(log_to_wandb=False), output_path="multi",
    checkpoint_path=None,
)
MultiSAETrainingRunner(cfg).run()
"""
BENCH = ["--bench", "core", "--data-dir", "../work/data", "--context-size", "32",
         "--batch-size-prompts", "8", "--device", "cpu", "--samples", "1024",
         "--bench-option", "core.n_eval_reconstruction_batches=2",
         "--bench-option", "core.n_eval_sparsity_variance_batches=2"]  # fmt: skip
GIVE = ["--model_name", "../work/model", "--dataset_path", f"../work/{OWT}"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, tiny_lm: TinyLM, tiny_cache: Path) -> dict:
    """Runs trained in ``work/`` with paths relative to it, then read from ``elsewhere/``
    (``sae-lens train``'s folder moved there)."""
    root = tmp_path_factory.mktemp("run_folders")
    world: World = build_world(root / "world", d_model=64)
    work, elsewhere = root / "work", root / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    shutil.copytree(world.model_dir, work / "model")
    shutil.copytree(world.data_dir, work / "data")
    run_module([*UPSTREAM, "--architecture", "freq_ordered", "--output_path", "up-llm"], cwd=work)
    run_module(
        [*UPSTREAM[:2], "--architecture", "standard", "--model_class_name", "AutoModelForCausalLM",
         "--model_name", str(tiny_lm.model_dir), "--hook_name", tiny_lm.hook_name,
         "--d_in", "64", "--d_sae", "128", "--dataset_path", str(tiny_lm.dataset_dir),
         "--context_size", "32", "--training_tokens", "4096", "--train_batch_size_tokens", "256",
         "--store_batch_size_prompts", "8", "--n_batches_in_buffer", "32", "--device", "cpu",
         "--log_to_wandb", "False", "--n_checkpoints", "0", "--use_cached_activations", "True",
         "--cached_activations_path", str(tiny_cache), "--output_path", "up-cached",
         "--checkpoint_path", "upstream-checkpoints"],
        cwd=work,
    )  # fmt: skip
    run_python(MULTI, cwd=work)
    trained = run_cli_commands([[*TRAIN, "--output_path", "ours"]], cwd=work, env=ENV)
    shutil.move(work / "ours", elsewhere / "ours")
    up = "../work/up-llm"
    commands = {
        "ours": ["evaluate", "ours", "--samples", "1024"],
        "recorded": ["evaluate", up, "--samples", "1024"],
        "given": ["evaluate", up, "--samples", "1024", *GIVE],
        "bench recorded": ["evaluate", up, *BENCH],
        "bench given": ["evaluate", up, *BENCH, *GIVE],
        "multi": ["evaluate", "../work/multi"],
        "multi one": ["evaluate", "../work/multi/fo", "--samples", "1024", *GIVE],
        "cached": ["evaluate", "../work/up-cached", "--samples", "1024"],
        "compare": ["compare", up, "../work/multi", "../work/up-cached", "ours", "-o", "cmp"],
        "demo with a model": ["evaluate", "ours", "--samples", "1024", "--llm-batch-size", "8"],
    }
    results = run_cli_commands(list(commands.values()), cwd=elsewhere, env=ENV)
    return {
        "work": work,
        "elsewhere": elsewhere,
        "train": trained[0],
        **dict(zip(commands, results, strict=True)),
    }


def _ok(result: list) -> str:
    code, out, err = result
    assert code == 0, err[-3000:]
    return out + err


def _error(result: list) -> str:
    code, _, err = result
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_train_records_absolute_paths_and_evaluates_after_a_move(folders: dict) -> None:
    _ok(folders["train"])
    ours = folders["elsewhere"] / "ours"
    runner = json.loads((ours / "runner_cfg.json").read_text())
    assert runner["model_name"] == str(folders["work"] / "model")
    assert runner["dataset_path"] == str(folders["work"] / OWT)
    metadata = json.loads((ours / "cfg.json").read_text())["metadata"]
    assert metadata["model_name"] == runner["model_name"]
    said = _ok(folders["ours"])  # from another directory, after the folder moved
    assert "SAE-Lens's run_evals: " in said and "Reconstruction Batches" in said  # progress
    assert "the plugins' metrics: reading 1,024 tokens of whole sequences" in said
    evaluated = json.loads((ours / "evaluation.json").read_text())
    assert math.isfinite(evaluated["kl_div_score"]) and evaluated["l0"] > 0


def test_evaluate_names_what_a_folder_recorded_and_takes_replacements(folders: dict) -> None:
    line = _error(folders["recorded"])
    assert "up-llm/runner_cfg.json records --model_name ./model, which is not here" in line
    assert line.endswith("give its place: --model_name PATH")
    _ok(folders["given"])
    evaluated = json.loads((folders["work"] / "up-llm" / "evaluation.json").read_text())
    assert math.isfinite(evaluated["ce_loss_score"])
    assert "--model_name ./model, which is not here" in _error(folders["bench recorded"])
    said = _ok(folders["bench given"])
    assert "[1/2] core: running" in said and "[2/2] sae_lens_ext: done in" in said
    core = next((folders["work"] / "up-llm" / "eval_results" / "core").glob("*.json"))
    assert json.loads(core.read_text())["eval_result_metrics"]["model_performance_preservation"]


def test_evaluate_and_compare_accept_upstream_runners_folders(folders: dict) -> None:
    line = _error(folders["multi"])
    assert "holds 2 SAEs trained together by SAE-Lens's MultiSAETrainingRunner (std, fo)" in line
    _ok(folders["multi one"])
    _ok(folders["cached"])
    out = _ok(folders["compare"])
    with open(folders["elsewhere"] / "cmp" / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"up-llm", "std", "fo", "up-cached", "ours"}
    for run in ("up-llm", "fo", "up-cached", "ours"):  # `sae-lens evaluate` ran on them
        assert rows[run]["kl_div_score"], run
    assert rows["std"]["kl_div_score"] == ""  # not evaluated: n/a, never 0
    assert "feature_frequencies.png" in out  # from each folder's sparsity.safetensors


def test_bench_only_options_still_need_bench(folders: dict) -> None:
    assert "--llm-batch-size needs --bench" in folders["demo with a model"][2]


def test_a_short_run_logs_every_step_and_draws_its_plots(folders: dict) -> None:
    """49 steps: a record per step (the default --log-every follows the run's length), the
    normalisation estimate sized to the run and said, and plots/ with lines drawn."""
    from sae_lens_ext.run.figures import build_training_curves
    from sae_lens_ext.run.output import read_log

    err = folders["train"][2]
    assert "n_batches_for_norm_estimate: 1000 -> 3 (768 tokens, 5% of the run's 49 steps)" in err
    assert "normalisation estimate: reading 3 batches before the first step" in err
    ours = folders["elsewhere"] / "ours"
    log = read_log(ours / "training_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 50))
    fig = build_training_curves({"ours": log})
    for ax in fig.axes:
        if ax.get_visible():
            (line,) = ax.get_lines()
            assert len(line.get_xdata()) == 49, ax.get_title()
    assert {p.name for p in (ours / "plots").iterdir()} == {
        "training_curves.png",
        "feature_frequencies.png",
        "frequency_ordering.png",
    }
    metrics = json.loads((ours / "metrics.json").read_text())
    assert 0 < metrics["before_first_step_s"] < metrics["wall_time_s"]
