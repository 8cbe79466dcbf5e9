"""The core knows no architecture: a third-party architecture gets every command, and a
plugin that implements the optional hooks gets its own defaults, table rows and figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import REPO, TinyLM, run_cli_commands

FORBIDDEN = re.compile(r"freq_ordered|temporal_consistency|sae_lens_ext_plugins")


def test_the_core_names_no_plugin():
    hits = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in sorted((REPO / "sae_lens_ext").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert hits == []


def test_the_core_draws_no_figure_a_built_in_draws(tmp_path):
    """Every file a built-in plugin's figure hooks write (``run_figures`` on a plain SAE,
    ``compare_figures`` on a saved run) is named nowhere in the core: a figure of a
    built-in's concept is the plugin's, never re-drawn by the core."""
    import torch
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from safetensors.torch import save_file

    from sae_lens_ext.api import EvalData, RunResults
    from sae_lens_ext.plugins import call_each_list

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
    data = EvalData(torch.randn(4, 32, 8))
    written = call_each_list("run_figures", Path, sae=sae, data=data, folder=tmp_path / "run")
    saved = tmp_path / "saved"
    saved.mkdir()
    save_file({"sparsity": torch.linspace(-3.0, -1.0, 16)}, saved / "sparsity.safetensors")
    runs = [RunResults("saved", saved)]
    written += call_each_list("compare_figures", Path, runs=runs, folder=tmp_path / "cmp")
    names = {path.name for path in written}
    assert "frequency_ordering.png" in names  # the built-ins were asked and answered
    core = {
        path.relative_to(REPO).as_posix(): path.read_text()
        for path in (REPO / "sae_lens_ext").rglob("*.py")
    }
    hits = sorted(
        f"{file}: {name}" for file, text in core.items() for name in names if name in text
    )
    assert hits == []


def run_commands(commands: list[list[str]], env: dict[str, str], cwd: Path) -> list[list]:
    """Run ``sae-lens`` commands through the real entry point in one fresh process."""
    results = run_cli_commands(commands, cwd=cwd, env={**env, "OMP_NUM_THREADS": "1"}, timeout=600)
    for args, (rc, _, err) in zip(commands, results, strict=True):
        assert rc == 0, (args, err[-3000:])
    return results


DEMO = ["demo", "--architecture", "toy_relu", "--eval-samples", "4096", "--progress", "none"]


@pytest.mark.e2e
def test_an_architecture_only_plugin_gets_every_command(plugin_site, tiny_lm: TinyLM, tmp_path):
    lm = [
        "train", "--architecture", "toy_relu", "--model_class_name", "AutoModelForCausalLM",
        "--model_name", str(tiny_lm.model_dir), "--hook_name", tiny_lm.hook_name,
        "--dataset_path", str(tiny_lm.dataset_dir), "--streaming", "False",
        "--is_dataset_tokenized", "False", "--context_size", "32", "--d_in", "64",
        "--d_sae", "128", "--training_tokens", "4096", "--train_batch_size_tokens", "256",
        "--normalize_activations", "expected_average_only_in", "--output_path", "lm",
        "--progress", "none",
    ]  # fmt: skip
    results = run_commands(
        [
            [*DEMO, "--samples", "8192", "-o", "demo"],
            lm,
            ["evaluate", "demo", "--samples", "4096"],
            ["evaluate", "lm", "--samples", "2048"],
            ["plots", "demo", "lm", "-o", "cmp"],
        ],
        plugin_site.env("toy"),
        tmp_path,
    )
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["architecture"] == "toy_relu" and metrics["training_samples"] >= 8192
    assert {"mcc", "explained_variance", "l0", "dead_latents", "shrinkage"} <= set(metrics)
    assert "toy_decoder_norm" not in metrics  # no optional hooks: generic metrics only
    assert "ground-truth MCC" in results[0][1]
    assert json.loads((tmp_path / "lm" / "cfg.json").read_text())["architecture"] == "toy_relu"
    evaluated = json.loads((tmp_path / "lm" / "evaluation.json").read_text())
    assert "ce_loss_score" in evaluated and "explained_variance" in evaluated
    written = {p.relative_to(tmp_path / "cmp").as_posix() for p in (tmp_path / "cmp").rglob("*")}
    assert {  # generic figures, and the built-in freq_ordered's per-run figures of any SAE
        "training_loss_comparison.png", "reconstruction_metrics.png", "metrics_comparison.png",
        "training_curves.png", "demo/feature_frequencies.png", "lm/frequency_ordering.png",
        "results.md",
    } <= written  # fmt: skip
    assert "absorption_metrics.png" not in written


@pytest.mark.e2e
def test_a_plugin_with_the_optional_hooks_shows_its_rows_and_figures(plugin_site, tmp_path):
    (result,) = run_commands([[*DEMO, "-o", "demo"]], plugin_site.env("toy", "extras"), tmp_path)
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["training_samples"] >= 16_384  # the plugin's demo_setup default
    assert metrics["sae_config"] == {"l1_coefficient": 0.3}
    assert metrics["toy_decoder_norm"] > 0
    assert "mean decoder row norm (toy)" in result[1]
    assert (tmp_path / "demo" / "plots" / "toy_decoder_norms.png").stat().st_size > 1000
