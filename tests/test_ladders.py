"""Ladders and grids like the research logs': ``sae-lens sweep`` (interrupted and resumed,
one shared pass on LM data), ``sae-lens evaluate --bench`` through the command line on a
tiny local model (SAE-Bench's own code, local stand-ins for its hub data), the logs' figures
built from those saved results and inspected, and seed-to-seed consistency.

Two module fixtures make the real results every test reads:

* ``demo_sweep``: a synthetic sweep of one variant with three seeds, interrupted with
  SIGINT while the second trains, then rerun;
* ``lm_runs``: on the tiny world of ``tests/bench_world.py``, a train sweep of two variants
  (one pass over the activations), a plain ``sae-lens train`` of the second variant, and
  ``sae-lens evaluate --bench`` of both (core, absorption and SCR for the first, core only
  for the second, so the figures have a missing metric to show).
"""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.bench_world import World, build_world
from tests.helpers import run_cli_commands, subprocess_env

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from sae_lens_ext.cli import cli; cli(prog_name='sae-lens')"]
ENV = {"OMP_NUM_THREADS": "1"}
DEMO_STEPS = 192  # 98,304 samples in batches of 512

DEMO_SWEEP = """
kind: demo
base: {architecture: standard, samples: 98304, batch_size: 512, d_sae: 128, eval_samples: 4096}
variants:
  - name: a
seeds: [0, 1, 2]
"""


def sae_lens(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=subprocess_env(ENV), cwd=cwd, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def demo_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The sweep interrupted (SIGINT) while its second variant trains, then run again."""
    root = tmp_path_factory.mktemp("demo_sweep")
    (root / "sweep.yaml").write_text(DEMO_SWEEP)
    args = ["sweep", "sweep.yaml", "-o", "out", "--log-every", "1", "--progress", "none"]
    proc = subprocess.Popen(
        [*CLI, *args], env=subprocess_env(ENV), cwd=root, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out = root / "out"
    wait_for(lambda: (out / "a-s0" / "cfg.json").is_file(), proc, "variant a-s0 finished")
    log = out / "a-s1" / "training_log.jsonl"
    wait_for(lambda: log.is_file() and log.read_text().strip(), proc, "a-s1 started training")
    proc.send_signal(signal.SIGINT)
    first_out, first_err = proc.communicate(timeout=300)
    first = {
        "rc": proc.returncode, "stdout": first_out, "stderr": first_err,
        "a-s0": (out / "a-s0" / "sae_weights.safetensors").stat().st_mtime_ns,
        "a-s1 files": sorted(p.name for p in (out / "a-s1").iterdir()),
        "a-s2 exists": (out / "a-s2").exists(),
    }  # fmt: skip
    second = sae_lens(*args, cwd=root)
    return {"root": root, "out": out, "first": first, "second": second}


def test_an_interrupted_sweep_resumes_without_retraining_finished_variants(demo_sweep) -> None:
    first, second, out = demo_sweep["first"], demo_sweep["second"], demo_sweep["out"]
    assert first["rc"] == 130, first["stderr"][-2000:]
    assert "sweep interrupted in variant a-s1" in first["stderr"]
    assert "cfg.json" not in first["a-s1 files"] and "checkpoints" in first["a-s1 files"]
    assert not first["a-s2 exists"]
    assert second.returncode == 0, second.stderr[-3000:]
    # what the rerun did: a-s0 kept, a-s1 resumed from its checkpoint, a-s2 trained
    assert "sweep: a-s0: done, skipped" in second.stdout
    assert "sweep: a-s1: resuming" in second.stdout and "sweep: a-s2: training" in second.stdout
    with open(out / "results.csv") as f:
        status = {row["run"]: row["status"] for row in csv.DictReader(f)}
    assert status == {"a-s0": "done earlier", "a-s1": "resumed", "a-s2": "trained"}
    assert (out / "a-s0" / "sae_weights.safetensors").stat().st_mtime_ns == first["a-s0"]
    records = [
        json.loads(x) for x in (out / "a-s1" / "training_log.jsonl").read_text().splitlines()
    ]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)) and steps[-1] == DEMO_STEPS
    assert steps[0] == 1  # the records before the interruption were kept
    for name in ("a-s0", "a-s1", "a-s2"):
        assert (out / name / "cfg.json").is_file()
        assert json.loads((out / name / "sweep_variant.json").read_text())["name"] == name


# --- the sweep file ---------------------------------------------------------------------------


def test_sweep_file_ladders_grids_and_seeds(tmp_path: Path) -> None:
    from sae_lens_ext.run.sweep import load_sweep

    (tmp_path / "s.yaml").write_text(
        "kind: demo\nbase: {samples: 1000, l1_coefficient: 0.5}\n"
        "variants:\n  - {name: base, architecture: standard}\n"
        "  - {name: one, architecture: freq_ordered, ordering_coefficient: 0.3}\n"
        "  - {name: two, extends: one, layer_norm: true}\n"
        "grid: {temporal_window: [2, 4], temporal_coefficient: [0.1, 1.0]}\n"
        "grid_names: {temporal_window: w, temporal_coefficient: c}\nseeds: [0, 3]\n"
    )
    sweep = load_sweep(str(tmp_path / "s.yaml"), sets=("samples=2000",))
    names = [v.name for v in sweep.variants]
    assert names[:4] == ["base-s0", "base-s3", "one-s0", "one-s3"]
    assert "w4_c1-s3" in names and len(names) == 2 * (3 + 4)
    two = next(v for v in sweep.variants if v.name == "two-s3")
    assert two.settings == {"samples": 2000, "l1_coefficient": 0.5, "architecture": "freq_ordered",
                            "ordering_coefficient": 0.3, "layer_norm": True, "data_seed": 0,
                            "seed": 3}  # fmt: skip
    assert two.step == "one + layer_norm=True; seed=3"
    assert sweep.output == Path("runs/s") and two.folder == Path("runs/s/two-s3")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: demo\nvariants: [{name: a}]\nbogus: 1\n", "unknown key 'bogus'"),
        ("kind: demo\nvariants: [{name: a}, {name: a}]\n", "two variants are named 'a'"),
        ("kind: demo\nvariants: [{name: b, extends: a}]\n", "extends 'a', which is not"),
        ("kind: demo\nbase: {samples: 1}\n", "no variants"),
        ("kind: demo\nvariants: [{name: a/b}]\n", "variant name 'a/b'"),
        ("kind: gpu\nvariants: [{name: a}]\n", "kind: 'gpu'"),
    ],
)
def test_sweep_file_mistakes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    from sae_lens_ext.errors import CliError
    from sae_lens_ext.run.sweep import load_sweep

    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(CliError, match=message.replace("(", r"\(")):
        load_sweep(str(tmp_path / "s.yaml"))


# --- seed consistency ---------------------------------------------------------------------------


def _sae(d_in: int, d_sae: int, seed: int):
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(seed)))
    return sae


def test_seed_consistency_of_a_permuted_copy_and_of_unrelated_saes() -> None:
    from sae_lens_ext.metrics import seed_consistency

    a = _sae(128, 256, seed=0)
    b = _sae(128, 256, seed=1)
    with torch.no_grad():  # the same dictionary, latents shuffled and rescaled
        b.W_dec.copy_(a.W_dec[torch.randperm(256)] * torch.rand(256, 1).add(0.5))
    same = seed_consistency(a, b)
    assert same["mean_matched_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert same["share_above"] == 1.0 and same["matched"] == 256
    assert abs(same["index_spearman"]) < 0.3  # found again, but at shuffled places
    assert seed_consistency(a, a)["index_spearman"] == pytest.approx(1.0)
    unrelated = seed_consistency(a, _sae(128, 256, seed=2))
    assert unrelated["mean_matched_cosine"] < 0.35 and unrelated["share_above"] == 0.0
    with torch.no_grad():  # half the latents in common: their share, the rest unmatched
        c = _sae(128, 256, seed=3)
        c.W_dec[:128] = a.W_dec[128:]
    half = seed_consistency(a, c)
    assert half["share_above"] == pytest.approx(0.5)
    assert 0.5 < half["mean_matched_cosine"] < 0.7
    smaller = seed_consistency(a, _sae(128, 64, seed=4))  # different widths: 64 pairs
    assert smaller["matched"] == 64
    with pytest.raises(ValueError, match="GiB"):
        seed_consistency(a, b, max_latents=128)


# --- LM runs: one shared pass, evaluate --bench through the command line -------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("ladder_world"), d_model=64)


LM_BASE = {
    "model_class_name": "AutoModelForCausalLM", "hook_name": "transformer.h.0",
    "streaming": False, "is_dataset_tokenized": False, "context_size": 32,
    "training_tokens": 8192, "train_batch_size_tokens": 256, "store_batch_size_prompts": 8,
    "n_batches_in_buffer": 32, "normalize_activations": "expected_average_only_in",
    "n_batches_for_norm_estimate": 4, "d_in": 64, "d_sae": 128,
}  # fmt: skip
BENCH = ["--data-dir", "DATA", "--context-size", "32", "--batch-size-prompts", "8",
         "--llm-batch-size", "32", "--device", "cpu", "--samples", "1024",
         "--bench-option", "core.n_eval_reconstruction_batches=2",
         "--bench-option", "core.n_eval_sparsity_variance_batches=2"]  # fmt: skip
ABSORPTION_SCR = [
    "--bench-option", "absorption.max_k_value=2",
    "--bench-option", "absorption.k_sparse_probe_batch_size=128",
    "--bench-option", "absorption.k_sparse_probe_num_epochs=10",
    "--bench-option", "scr.dataset_names=LabHC/bias_in_bios_class_set1",
    "--bench-option", 'scr.column1_vals_lookup={"LabHC/bias_in_bios_class_set1": '
                      '[["professor", "nurse"]]}',
    "--bench-option", "scr.train_set_size=80", "--bench-option", "scr.test_set_size=40",
    "--bench-option", "scr.n_values=2,5,10,20",
]  # fmt: skip


@pytest.fixture(scope="module")
def lm_runs(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lm_runs")
    base = {**LM_BASE, "model_name": str(world.model_dir),
            "dataset_path": str(world.data_dir / "Skylion007" / "openwebtext")}  # fmt: skip
    sweep = {"kind": "train", "base": base, "evaluate": {"samples": 1024},
             "variants": [{"name": "plain", "architecture": "standard"},
                          {"name": "ordered", "architecture": "freq_ordered"}]}  # fmt: skip
    (root / "lm.yaml").write_text(json.dumps(sweep))  # JSON is YAML
    alone = ["train", "--architecture", "freq_ordered", "--output_path", "alone",
             "--progress", "none"]  # fmt: skip
    for key, value in base.items():
        alone += [f"--{key}", str(value)]
    bench = [str(world.data_dir) if a == "DATA" else a for a in BENCH]
    commands = [
        ["sweep", "lm.yaml", "-o", "out", "--progress", "none"],
        alone,
        ["evaluate", "out/plain", "--bench", "core,absorption,scr", *bench, *ABSORPTION_SCR],
        ["evaluate", "out/ordered", "--bench", "core", *bench],
        ["evaluate", "out/ordered", "--bench", "nope"],
        ["evaluate", "out/ordered", "--bench", "tpp", "--context-size", "32",
         "--output-dir", "no-data"],
        ["evaluate", "out/ordered", "--llm-batch-size", "8"],
    ]  # fmt: skip
    return {
        "root": root,
        "out": root / "out",
        "results": run_cli_commands(commands, cwd=root, env=ENV),
    }


def test_lm_sweep_trains_variants_in_one_pass_exactly_as_train_does(lm_runs) -> None:
    results, out = lm_runs["results"], lm_runs["out"]
    for code, _, err in results[:4]:
        assert code == 0, err[-3000:]
    assert "plain, ordered: training in one pass over the activations" in results[0][2]
    with open(out / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert {r["status"] for r in rows.values()} == {"trained (one pass for 2)"}
    assert float(rows["ordered"]["kl_div_score"]) < 1  # `sae-lens evaluate` ran on each
    from safetensors.torch import load_file

    shared = load_file(out / "ordered" / "sae_weights.safetensors")
    alone = load_file(lm_runs["root"] / "alone" / "sae_weights.safetensors")
    assert shared.keys() == alone.keys()
    for key in shared:  # the second variant of the pass: bit for bit what `train` gives
        assert torch.equal(shared[key], alone[key]), key
    runner = json.loads((out / "ordered" / "runner_cfg.json").read_text())
    assert runner["sae"]["architecture"] == "freq_ordered"
    assert runner["output_path"] == str(Path("out") / "ordered")


def _bench_file(out: Path, variant: str, bench: str) -> Path:
    return out / variant / "eval_results" / bench / f"{variant}_custom_sae_eval_results.json"


def test_evaluate_bench_writes_sae_bench_files_and_plugin_metrics_beside(lm_runs) -> None:
    from pydantic import TypeAdapter
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput
    from sae_bench.evals.core.eval_output import CoreEvalOutput
    from sae_bench.evals.scr_and_tpp.eval_output import ScrEvalOutput
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    out = lm_runs["out"]
    loaded = {}
    for bench, output_class in (("core", CoreEvalOutput), ("absorption", AbsorptionEvalOutput),
                                ("scr", ScrEvalOutput)):  # fmt: skip
        path = _bench_file(out, "plain", bench)
        validate_eval_output_format_file(str(path), output_class)
        loaded[bench] = TypeAdapter(output_class).validate_python(json.loads(path.read_text()))
    core = loaded["core"]
    assert core.eval_config.context_size == 32  # the flag; the dataset from runner_cfg.json
    assert core.eval_config.dataset.endswith("Skylion007/openwebtext")
    assert core.eval_config.n_eval_reconstruction_batches == 2  # --bench-option
    assert core.sae_cfg_dict["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert 0 < core.eval_result_metrics.reconstruction_quality.cossim < 1
    assert loaded["scr"].eval_config.n_values == [2, 5, 10, 20]
    assert loaded["absorption"].eval_config.max_k_value == 2
    assert len(loaded["absorption"].eval_result_details) >= 20  # first letters evaluated
    extra = json.loads(_bench_file(out, "plain", "sae_lens_ext").read_text())
    metrics = extra["metrics"]
    assert extra["architecture"] == "standard" and metrics["tokens"] >= 1024
    assert -1 <= metrics["ordering_spearman"] <= 1  # a plugin's metric, on any SAE
    assert "mean_autocorrelation" in metrics  # computed on whole sequences
    assert metrics["labels"]["ordering_spearman"].startswith("ordering quality")
    assert not (out / "ordered" / "eval_results" / "absorption").exists()


def test_evaluate_bench_mistakes_are_one_line_exit_2(lm_runs) -> None:
    unknown, no_data, needs_bench = lm_runs["results"][4:]
    assert unknown[0] == 2 and "--bench nope: unknown bench nope" in unknown[2]
    assert no_data[0] == 2, no_data[2][-2000:]
    line = [x for x in no_data[2].splitlines() if x.startswith("Error:")]
    assert len(line) == 1 and "LabHC/bias_in_bios" in line[0] and "--data-dir" in line[0]
    assert "data_dir=" not in line[0]  # the command's flag, not the Python setting
    assert "Traceback" not in no_data[2]
    assert needs_bench[0] == 2 and "--llm-batch-size needs --bench" in needs_bench[2]


# --- the figures, from those saved results --------------------------------------------------------


@pytest.fixture(scope="module")
def runs(demo_sweep, lm_runs) -> list:
    from sae_lens_ext.run.results import read_runs

    folders = [demo_sweep["out"] / f"a-s{i}" for i in range(3)]
    folders += [lm_runs["out"] / "plain", lm_runs["out"] / "ordered"]
    return read_runs(folders)


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _bars(ax) -> list[float]:
    return [p.get_height() for p in ax.patches if p.get_width() > 0]


def test_training_loss_comparison(runs) -> None:
    from sae_lens_ext.run.figures import build_training_loss_comparison

    fig = build_training_loss_comparison(runs)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == [r.name for r in runs]
    final = [r.log[-1]["loss"] for r in runs]
    assert _bars(ax) == pytest.approx(final)
    assert _texts(ax) == [f"{v:.3g}" for v in final]  # value labels, no source marks
    assert "loss" in ax.get_ylabel() and ax.get_title() == "Final training loss"


def test_reconstruction_metrics_mark_missing_and_fallback_values(runs) -> None:
    from sae_lens_ext.run.figures import FALLBACK_MARK, build_reconstruction_metrics

    fig = build_reconstruction_metrics(runs)
    kl, cos = fig.axes
    assert kl.get_title() == "KL-divergence score" and "1 = " in kl.get_ylabel()
    # demo runs have no model, so no KL score: three n/a marks, two bars (SAE-Bench core)
    assert _texts(kl).count("n/a") == 3
    assert _bars(kl) == pytest.approx([r.values["core.kl_div_score"] for r in runs[3:]])
    # cosine: the demo's own value (marked) where SAE-Bench core did not run
    assert _bars(cos) == pytest.approx([r.values["cossim"] for r in runs[:3]]
                                       + [r.values["core.cossim"] for r in runs[3:]])  # fmt: skip
    assert sum(t.endswith(FALLBACK_MARK) for t in _texts(cos)) == 3
    assert any(FALLBACK_MARK in t.get_text() for t in fig.texts)  # the note says what † is


def test_metrics_comparison_has_three_panels_with_series(runs) -> None:
    from sae_lens_ext.run.figures import build_metrics_comparison

    fig = build_metrics_comparison(runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Reconstruction quality", "Sparsity", "Model preservation"]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes[:2]]
    assert legends == [["explained variance", "cosine similarity"], ["L0", "L1"]]
    sparsity = fig.axes[1]
    assert _texts(sparsity).count("n/a") == 3  # the demo reports no L1
    assert len(_bars(sparsity)) == 5 + 2
    assert _texts(fig.axes[2]).count("n/a") == 3  # nor a CE-loss score


def test_absorption_metrics(runs) -> None:
    from sae_lens_ext.run.figures import build_absorption_metrics

    fig = build_absorption_metrics(runs)
    mean, split, letters = fig.axes
    plain = runs[3]
    assert _bars(split) == [plain.values["absorption.mean_num_split_features"]]
    assert _texts(split).count("n/a") == 4 and _texts(mean).count("n/a") == 4
    (line,) = [ln for ln in letters.get_lines() if len(ln.get_xdata())]
    details = plain.bench["absorption"]["eval_result_details"]
    assert list(line.get_xdata()) == sorted(d["first_letter"] for d in details)
    assert line.get_label() == "plain"
    legend = [t.get_text() for t in letters.get_legend().get_texts()]
    assert legend.count("ordered (n/a)") == 1 and letters.get_xlabel() == "first letter"


def test_scr_threshold_comparison(runs) -> None:
    from sae_lens_ext.run.figures import build_scr_threshold_comparison

    fig = build_scr_threshold_comparison(runs)
    for ax, prefix in zip(fig.axes, ("scr_metric_threshold_", "scr_dir1_threshold_"),
                          strict=True):  # fmt: skip
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "plain"]
        assert list(line.get_xdata()) == [2, 5, 10, 20]
        assert list(line.get_ydata()) == [
            runs[3].values[f"scr.{prefix}{n}"] for n in (2, 5, 10, 20)
        ]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "5", "10", "20"]
        assert "threshold" in ax.get_xlabel() and "SCR" in ax.get_ylabel()
        assert sum("(n/a)" in t.get_text() for t in ax.get_legend().get_texts()) == 4


def test_training_curves_draw_every_loss_term(runs) -> None:
    from sae_lens_ext.run.figures import build_training_curves

    fig = build_training_curves({r.name: r.log for r in runs})
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[:4] == ["Total loss", "frequency_ordering term", "l1 term", "mse term"]
    ordering = fig.axes[titles.index("frequency_ordering term")]
    assert [ln.get_label() for ln in ordering.get_lines()] == ["ordered"]  # only it logs it
    mse = fig.axes[titles.index("mse term")]
    assert len(mse.get_lines()) == 5 and mse.get_xlabel() == "training step"
    steps = mse.get_lines()[0].get_xdata()
    assert list(steps) == [r["step"] for r in runs[0].log]


def test_frequency_figures_from_saved_sparsity(runs) -> None:
    from sae_lens_ext_plugins.freq_ordered.plots import (
        build_feature_frequencies,
        build_frequency_ordering,
    )
    from safetensors.torch import load_file
    from scipy.stats import spearmanr

    run = runs[4]
    frequencies = run.frequencies()
    saved = load_file(run.folder / "sparsity.safetensors")["sparsity"]
    assert torch.allclose(frequencies[saved > -9.5], 10 ** saved[saved > -9.5])
    fig = build_feature_frequencies(frequencies, run.name, "source")
    (ax,) = fig.axes
    assert len(ax.patches) == 128 and ax.get_xlabel() == "latent index"
    assert "fraction of tokens" in ax.get_ylabel() and ax.get_yscale() == "log"
    fig = build_frequency_ordering(frequencies, run.name, "source")
    (ax,) = fig.axes
    rho = spearmanr(range(128), frequencies.numpy()).statistic
    assert f"{rho:.3f}" in ax.get_title()
    sorted_line, by_index = ax.get_lines()
    assert list(sorted_line.get_ydata()) == sorted(sorted_line.get_ydata(), reverse=True)
    assert sorted_line.get_label() == "sorted by frequency"
    assert by_index.get_label() == "by latent index"


def test_compare_writes_figures_tables_and_seed_consistency(demo_sweep, lm_runs, tmp_path) -> None:
    from click.testing import CliRunner

    from sae_lens_ext.cli import cli

    folders = [str(demo_sweep["out"] / f"a-s{i}") for i in range(3)]
    folders += [str(lm_runs["out"] / "plain"), str(lm_runs["out"] / "ordered")]
    result = CliRunner().invoke(cli, ["compare", *folders, "-o", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    written = {p.relative_to(tmp_path / "cmp").as_posix() for p in (tmp_path / "cmp").rglob("*")}
    for name in ("training_loss_comparison.png", "reconstruction_metrics.png",
                 "metrics_comparison.png", "absorption_metrics.png",
                 "scr_threshold_comparison.png", "training_curves.png", "all_metrics.png",
                 "a-s0/feature_frequencies.png", "ordered/frequency_ordering.png",
                 "results.csv", "results.md", "seed_consistency.md"):  # fmt: skip
        assert name in written, name
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "| a-s0 |" in table and "core.kl_div_score" in table and "n/a" in table
    consistency = json.loads((tmp_path / "cmp" / "seed_consistency.json").read_text())
    pairs = {(r["run_a"], r["run_b"]) for r in consistency}
    assert pairs == {("a-s0", "a-s1"), ("a-s0", "a-s2"), ("a-s1", "a-s2")}  # only the seeds differ
    for row in consistency:
        assert 0 < row["mean_matched_cosine"] < 1 and row["matched"] == 128
        assert not math.isnan(row["share_above"])
    assert "seed consistency a-s0 vs a-s1" in result.output
