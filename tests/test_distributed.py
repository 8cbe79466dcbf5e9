"""Data-parallel training under torchrun (2 CPU processes, gloo), end to end.

Three launches, shared by the tests of this module (imports dominate: each process
imports torch and SAE-Lens once, ``tests/distributed_driver.py`` runs several commands):

1. ``torchrun -m sae_lens_ext demo`` (freq_ordered, resampling and sort on), interrupted
   with SIGINT as a terminal's Ctrl-C would (torchrun forwards it to both ranks);
2. one process: the reference runs, each with ``--data-streams 2`` (the same global
   batches as two processes);
3. two processes: the same runs, and the interrupted run resumed next to an
   uninterrupted one.

The runs: the demo for upstream ``standard``, ``freq_ordered`` (resampling, sort, ordering
loss) and ``temporal_consistency`` (resampling) on synthetic data; ``sae-lens train`` on
the tiny local model (live activations: ``standard`` and ``temporal_consistency``, whose
windows come from each rank's own activation stores), and on its activations cached by
upstream's ``CacheActivationsRunner`` (``freq_ordered`` and ``temporal_consistency``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import REPO, TinyLM, run_module, subprocess_env

pytestmark = pytest.mark.e2e

DRIVER = str(REPO / "tests" / "distributed_driver.py")
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {"OMP_NUM_THREADS": "1"}
DEMO = ["demo", "--eval-samples", "500", "--progress", "none", "--set", "dtype=float64",
        "--n-checkpoints", "1"]  # fmt: skip
SMALL_BATCH = ["--batch-size", "256"]
DEMO_RUNS = {
    "standard": [*DEMO, "--architecture", "standard", "--samples", "10240", *SMALL_BATCH],
    # few rows per step and a strong L1: latents die, and are resampled; the ordering
    # loss on all rows (ordering_rows=0: batch-decomposable, see docs/scale.md)
    "freq_ordered": [*DEMO, "--architecture", "freq_ordered", "--samples", "7680",
                     "--batch-size", "128", "--d-sae", "1024", "--set", "resample_dead_every=4",
                     "--set", "sort_latents_every=5", "--set", "ordering_rows=0",
                     "--set", "l1_coefficient=5", "--set", "frequency_decay=0.3"],
    "temporal_consistency": [*DEMO, "--architecture", "temporal_consistency",
                             "--samples", "5120", "--batch-size", "64", "--d-sae", "1024",
                             "--set", "resample_dead_every=4", "--set", "l1_coefficient=5"],
}  # fmt: skip
#: the interrupted run: long enough to be mid-run when SIGINT lands
RESUME_RUN = [*DEMO[:-2], "--architecture", "freq_ordered", "--samples", "51200",
              *SMALL_BATCH, "--d-sae", "128", "--set", "resample_dead_every=10",
              "--set", "sort_latents_every=5", "--log-every", "10"]  # fmt: skip


TRAIN_RUNS = ["lm_standard", "lm_temporal_consistency", "cached_freq_ordered",
              "cached_temporal_consistency"]  # fmt: skip


def train_runs(tiny: TinyLM, cache: Path) -> dict[str, list[str]]:
    common = ["train", "--model_class_name", "AutoModelForCausalLM",
              "--model_name", str(tiny.model_dir), "--hook_name", tiny.hook_name,
              "--d_in", str(tiny.d_in), "--d_sae", "128", "--context_size", "32",
              "--training_tokens", "8192", "--train_batch_size_tokens", "256",
              "--normalize_activations", "expected_average_only_in",
              "--n_batches_for_norm_estimate", "4", "--n_checkpoints", "1",
              "--progress", "none"]  # fmt: skip
    live = ["--dataset_path", str(tiny.dataset_dir), "--streaming", "False",
            "--is_dataset_tokenized", "False", "--store_batch_size_prompts", "8",
            "--n_batches_in_buffer", "32"]  # fmt: skip
    cached = ["--use_cached_activations", "True", "--cached_activations_path", str(cache)]
    return {
        "lm_standard": [*common, "--architecture", "standard", *live],
        # windows of consecutive positions from each rank's own activation stores
        "lm_temporal_consistency": [*common, "--architecture", "temporal_consistency", *live],
        "cached_freq_ordered": [*common, "--architecture", "freq_ordered", *cached,
                                "--ordering_rows", "0"],
        "cached_temporal_consistency": [*common, "--architecture", "temporal_consistency",
                                        *cached],
    }  # fmt: skip


def output_flag(args: list[str]) -> str:
    return "-o" if args[0] == "demo" else "--output_path"


def run_driver(runs: list[list[str]], cwd: Path, *, processes: int) -> str:
    spec = cwd / "runs.json"
    spec.write_text(json.dumps(runs))
    launcher = TORCHRUN if processes > 1 else []
    proc = run_module([*launcher, DRIVER, str(spec)], env=ENV, cwd=cwd, timeout=900)
    return proc.stdout + proc.stderr


def interrupt_mid_run(cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun -m sae_lens_ext demo``; SIGINT to torchrun once training prints a step."""
    args = [sys.executable, *TORCHRUN, "-m", "sae_lens_ext", *RESUME_RUN, "-o", "interrupted",
            "--progress", "plain"]  # fmt: skip
    proc = subprocess.Popen(args, env=subprocess_env(ENV), cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    assert proc.stderr is not None
    # a launch that never prints a step (or hangs after SIGINT) is killed, workers included
    watchdog = threading.Timer(600, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("step "):
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate()
    finally:
        watchdog.cancel()
    return subprocess.CompletedProcess(args, proc.returncode, out, "".join(seen) + err)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, tiny_lm: TinyLM, tiny_cache: Path
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("distributed")
    cache = tiny_cache
    runs = {**DEMO_RUNS, **train_runs(tiny_lm, cache)}
    (root / "two").mkdir()
    interrupted = interrupt_mid_run(root / "two")
    (root / "one").mkdir()
    one = [[*a, output_flag(a), n, "--data-streams", "2"] for n, a in runs.items()]
    run_driver(one, root / "one", processes=1)
    two = [[*a, output_flag(a), n] for n, a in runs.items()]
    two += [[*RESUME_RUN, "-o", "interrupted", "--resume"], [*RESUME_RUN, "-o", "uninterrupted"]]
    log_two = run_driver(two, root / "two", processes=2)
    return {"root": root, "runs": runs, "interrupted": interrupted, "log_two": log_two,
            "cache": cache}  # fmt: skip


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        **load_file(folder / "sae_weights.safetensors"),
        **{f"log_sparsity.{k}": v for k, v in load_file(folder / "sparsity.safetensors").items()},
    }


def trainer_state(output: Path) -> dict[str, Any]:
    (checkpoint,) = [p for p in (output / "checkpoints").iterdir() if not p.name.startswith(".")]
    return torch.load(checkpoint / "trainer_state.pt", weights_only=False)


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        scale = float(a[key].double().abs().max()) or 1.0
        torch.testing.assert_close(
            b[key].double(), a[key].double(), rtol=0, atol=1e-5 * scale, msg=f"{what}: {key}"
        )


@pytest.mark.parametrize("name", [*DEMO_RUNS, *TRAIN_RUNS])
def test_two_processes_train_the_sae_one_process_trains_on_the_same_global_batches(
    world: dict[str, Any], name: str
) -> None:
    one, two = world["root"] / "one" / name, world["root"] / "two" / name
    assert_close(weights(one), weights(two), name)  # parameters, buffers, firing rates
    state_one, state_two = trainer_state(one), trainer_state(two)  # mid-run checkpoint
    for key in ("n_forward_passes_since_fired", "act_freq_scores"):  # dead-latent state
        assert torch.equal(state_one[key], state_two[key]), key
    assert state_one["n_training_samples"] == state_two["n_training_samples"]
    metrics_one, metrics_two = (json.loads((p / "metrics.json").read_text()) for p in (one, two))
    assert (metrics_one["processes"], metrics_two["processes"]) == (1, 2)
    assert metrics_one["data_streams"] == metrics_two["data_streams"] == 2
    assert metrics_one["training_steps"] == metrics_two["training_steps"]


@pytest.mark.parametrize("name", ["freq_ordered", "temporal_consistency"])
def test_resampling_chose_the_same_rows_and_the_sort_the_same_order(
    world: dict[str, Any], name: str
) -> None:
    resampled = [
        json.loads((world["root"] / run / name / "metrics.json").read_text())["resampled_latents"]
        for run in ("one", "two")
    ]
    assert resampled[0] == resampled[1] > 0
    if name == "freq_ordered":  # the last step (60) sorted: the frequency buffer is ordered
        frequency = weights(world["root"] / "two" / name)["latent_frequency"]
        assert (frequency[:-1] >= frequency[1:]).all() and frequency[0] > frequency[-1]


def test_rank_zero_alone_writes_outputs_and_logs(world: dict[str, Any]) -> None:
    runs = world["runs"]
    # one results line per run (rank 0), not one per process
    assert world["log_two"].count("written to ") == len(runs) + 2
    for name in runs:
        steps = [
            json.loads(line)["step"]
            for line in (world["root"] / "two" / name / "training_log.jsonl")
            .read_text()
            .splitlines()
        ]
        assert steps == sorted(set(steps)) and steps, name


def test_interrupted_two_process_run_resumes_to_the_uninterrupted_result(
    world: dict[str, Any],
) -> None:
    interrupted = world["interrupted"]
    lines = [ln for ln in interrupted.stderr.splitlines() if ln.startswith("Error: interrupted")]
    assert len(lines) == 1, interrupted.stderr[-3000:]  # rank 0 says it; rank 1 exits quietly
    assert lines[0].endswith("; rerun the same command with --resume")
    assert interrupted.returncode != 0
    two = world["root"] / "two"
    (checkpoint,) = (two / "interrupted" / "checkpoints").iterdir()
    state = torch.load(checkpoint / "loop_state.pt", weights_only=False)
    assert len(state["data_by_rank"]) == 2  # each rank's data position
    resumed, reference = weights(two / "interrupted"), weights(two / "uninterrupted")
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key  # bit-identical

    def log(folder: Path) -> list[dict[str, Any]]:
        rows = [
            json.loads(line) for line in (folder / "training_log.jsonl").read_text().splitlines()
        ]
        return [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")} for r in rows]

    assert log(two / "interrupted") == log(two / "uninterrupted")


def test_cached_activations_train_both_architectures(world: dict[str, Any]) -> None:
    from sae_lens import SAE

    for name, arch in [("cached_freq_ordered", "freq_ordered"),
                       ("cached_temporal_consistency", "temporal_consistency")]:  # fmt: skip
        folder = world["root"] / "one" / name
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["architecture"] == arch and metrics["cached_activations"] is True
        assert metrics["training_samples"] >= 8192
        assert metrics["last_step"]["explained_variance"] > 0, metrics["last_step"]
        sae = SAE.load_from_disk(folder)
        assert sae.cfg.architecture() == arch and sae.cfg.metadata.hook_name == "transformer.h.0"
