"""``sae-lens train`` on the tiny local model for a window architecture: the core's window
batches, Ctrl-C and ``--resume`` bit-identical, ``evaluate`` on the folder it wrote."""

from __future__ import annotations

import json
import math
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import TinyLM, subprocess_env
from tests.test_cli_train import CLI, ENV, log_without_times, sae_lens

pytestmark = pytest.mark.e2e


def window_run(tiny: TinyLM, output: str) -> list[str]:
    return [
        "train", "--architecture", "temporal_consistency", "--temporal_window", "4",
        "--model_class_name", "AutoModelForCausalLM", "--model_name", str(tiny.model_dir),
        "--hook_name", tiny.hook_name, "--dataset_path", str(tiny.dataset_dir),
        "--streaming", "False", "--is_dataset_tokenized", "False",
        "--context_size", str(tiny.context_size), "--d_in", str(tiny.d_in), "--d_sae", "128",
        "--training_tokens", "24576", "--train_batch_size_tokens", "256",
        "--store_batch_size_prompts", "4", "--n_batches_in_buffer", "8",
        "--normalize_activations", "expected_average_only_in", "--n_batches_for_norm_estimate", "4",
        "--l1_coefficient", "1", "--output_path", output, "--progress", "plain", "--log-every", "8",
    ]  # fmt: skip


def test_window_lm_run_resumes_bit_identically_then_evaluates(tiny_lm: TinyLM, tmp_path: Path):
    sae_lens(*window_run(tiny_lm, "ref"), cwd=tmp_path)
    proc = subprocess.Popen([*CLI, *window_run(tiny_lm, "run")], env=subprocess_env(ENV),
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:  # training runs: press Ctrl-C
        if line.startswith("step "):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert not (tmp_path / "run" / "cfg.json").exists()
    sae_lens(*window_run(tiny_lm, "run"), "--resume", cwd=tmp_path)
    ref, run = tmp_path / "ref", tmp_path / "run"
    for name in ("sae_weights.safetensors", "sparsity.safetensors"):
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    assert log_without_times(run / "training_log.jsonl") == log_without_times(
        ref / "training_log.jsonl"
    )

    sae_lens("evaluate", "ref", "--samples", "2048", cwd=tmp_path)
    evaluated = json.loads((ref / "evaluation.json").read_text())
    # SAE-Lens's run_evals on the run's model and data (a random tiny model: any finite score)
    assert math.isfinite(evaluated["ce_loss_score"]) and evaluated["l0"] > 0
    assert -1 <= evaluated["mean_autocorrelation"] <= 1  # a plugin metric, on whole sequences
    assert "latent lag-1 autocorrelation" in evaluated["labels"]["mean_autocorrelation"]
