"""What users type, through the real ``sae-lens`` entry points (issue 19, items 5, 6, 8-11):
numbers as Python writes them, sweep files checked before anything is written, the README's
demos in sequence, syntax errors answered before the slow imports, one-line warnings (once,
rank 0 only under torchrun) and a complete ``sae-lens plugins`` table when piped. The bad
inputs themselves are rows of docs/cli.md's error table (tests/test_cli_errors.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import TinyLM, run_cli_commands, subprocess_env

CLI = [sys.executable, "-c", "from sae_lens_ext.cli import cli; cli(prog_name='sae-lens')"]
ENV = {"OMP_NUM_THREADS": "1"}
TINY_DEMO = ["--samples", "4096", "--eval-samples", "2048", "--progress", "none"]


def sae_lens(*args: str, cwd: Path, env: dict[str, str] | None = None, launcher: list[str] = ()):
    """``sae-lens ARGS`` in a fresh interpreter (stdout a pipe, not a terminal)."""
    command = [sys.executable, *launcher, "-m", "sae_lens_ext"] if launcher else CLI
    return subprocess.run(
        [*command, *args], env=subprocess_env({**ENV, **(env or {})}), cwd=cwd,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def tiny_train_flags(tiny: TinyLM) -> list[str]:
    return [
        "--model_class_name", "AutoModelForCausalLM", "--model_name", str(tiny.model_dir),
        "--hook_name", tiny.hook_name, "--dataset_path", str(tiny.dataset_dir),
        "--streaming", "False", "--is_dataset_tokenized", "False",
        "--context_size", str(tiny.context_size), "--d_in", str(tiny.d_in), "--d_sae", "64",
        "--train_batch_size_tokens", "256", "--store_batch_size_prompts", "8",
        "--n_batches_in_buffer", "32", "--n_batches_for_norm_estimate", "2",
        "--progress", "none",
    ]  # fmt: skip


# --- numbers ------------------------------------------------------------------------------------


def test_one_conversion_reads_numbers_as_python_does() -> None:
    from sae_lens_ext.run.values import NotANumber, coerce, number_kind, to_number

    for text, value in [
        ("1e-3", 1e-3),
        ("5e+3", 5e3),
        ("1e9", 1e9),
        (".5", 0.5),
        ("1_000.5", 1000.5),
    ]:
        assert to_number(text, float) == value and isinstance(to_number(text, float), float)
    assert to_number("1e6", int) == 1_000_000 and to_number("2.0e+3", int) == 2000
    assert (
        to_number(4096.0, int) == 4096
        and to_number("12345678901234567890", int) == 12345678901234567890
    )
    for bad, kind in [("abc", float), ("1.5e0", int), (True, float), ("1e3.5", int), ([1], int)]:
        with pytest.raises(NotANumber):
            to_number(bad, kind)
    assert number_kind(float | None) is float and number_kind(int) is int
    assert number_kind(str) is None and number_kind(list[int]) is None
    assert coerce("1e-3", float | None) == 1e-3 and coerce(None, int | None) is None
    assert coerce(3, float) == 3.0 and coerce("x", str) == "x"


@pytest.mark.e2e
def test_scientific_notation_works_in_set_sweep_files_config_and_flags(
    tiny_lm: TinyLM, tmp_path: Path
) -> None:
    (tmp_path / "run.yaml").write_text(
        "training_tokens: 4.096e+3\nsae:\n  architecture: standard\n  l1_coefficient: 1e-3\n"
        "  lr: 5e-4\n"
    )
    (tmp_path / "sweep.yaml").write_text(
        "base: {samples: 4.096e3, d_sae: 64, eval_samples: 2048, l1_coefficient: 1e-3}\n"
        "variants:\n  - {name: a, architecture: standard, lr: 5e-3}\n"
    )
    results = run_cli_commands(
        [
            ["demo", "-o", "demo", *TINY_DEMO, "--d-sae", "64", "--set", "l1_coefficient=1e-3",
             "--set", "dead_feature_window=1e1", "--samples", "4.096e3"],
            ["sweep", "sweep.yaml", "-o", "sweep", "--set", "eval_samples=2.048e3",
             "--progress", "none"],
            ["train", "--config", "run.yaml", *tiny_train_flags(tiny_lm),
             "--output_path", "config-run"],
            ["train", *tiny_train_flags(tiny_lm), "--training_tokens", "4.096e3",
             "--l1_coefficient", "5e+0", "--output_path", "flag-run"],
        ],
        cwd=tmp_path,
        env=ENV,
    )  # fmt: skip
    for code, _, err in results:
        assert code == 0, err[-3000:]
    demo = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert demo["sae_config"]["l1_coefficient"] == 1e-3 and demo["training_samples"] == 4096
    assert demo["trainer_config"] == {"dead_feature_window": 10}
    variant = json.loads((tmp_path / "sweep" / "a" / "metrics.json").read_text())
    assert variant["sae_config"]["l1_coefficient"] == 1e-3 and variant["lr"] == 5e-3
    assert variant["eval_samples"] == 2048 and variant["training_samples"] == 4096
    config_run = json.loads((tmp_path / "config-run" / "runner_cfg.json").read_text())
    assert config_run["training_tokens"] == 4096 and config_run["lr"] == 5e-4
    assert config_run["sae"]["l1_coefficient"] == 1e-3
    flag_run = json.loads((tmp_path / "flag-run" / "runner_cfg.json").read_text())
    assert flag_run["training_tokens"] == 4096 and flag_run["sae"]["l1_coefficient"] == 5.0


def test_bench_options_take_numbers_as_python_writes_them() -> None:
    from sae_lens_ext.errors import CliError
    from sae_lens_ext.run.evaluate_bench import parse_bench_options

    parsed = parse_bench_options(
        ("core.n_eval_reconstruction_batches=2e1", "scr.n_values=2,5e0,1e1",
         "absorption.k_sparse_probe_l1_decay=1e-3")
    )  # fmt: skip
    assert parsed == {
        "core": {"n_eval_reconstruction_batches": 20},
        "scr": {"n_values": [2, 5, 10]},
        "absorption": {"k_sparse_probe_l1_decay": 1e-3},
    }
    with pytest.raises(CliError, match="expected an integer"):
        parse_bench_options(("core.context_size=1.5",))
    with pytest.raises(CliError, match="expected bool"):
        parse_bench_options(("core.compute_kl=maybe",))


# --- syntax first -------------------------------------------------------------------------------


def test_syntax_errors_answer_before_sae_lens_is_imported(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("base: {samples: 4096}\nvariants: [{name: a}]\n")
    (tmp_path / "run").mkdir()
    cases = {
        ("demo", "--set", "x"): "Error: --set 'x': expected FIELD=VALUE, e.g. --set l1_coefficient=2",
        ("sweep", "s.yaml", "--set", "samples"):
            "Error: --set 'samples': expected KEY=VALUE, e.g. --set samples=200000",
        ("evaluate", "run", "--bench", "core", "--bench-option", "core"):
            "Error: --bench-option 'core': expected BENCH.FIELD=VALUE, e.g. scr.n_values=2,5",
    }  # fmt: skip
    code = (
        "import contextlib, io, json, sys, time\n"
        "t = time.perf_counter()\n"
        "from sae_lens_ext.cli import cli\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        "    try:\n"
        "        cli.main(json.loads(sys.argv[1]), prog_name='sae-lens')\n"
        "    except SystemExit as exc:\n"
        "        code = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'sae_lens', 'transformers') if m in sys.modules)\n"
        "print(json.dumps([code, err.getvalue(), time.perf_counter() - t, heavy]))\n"
    )
    for args, expected in cases.items():
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(args)], env=subprocess_env(ENV),
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        wall = time.perf_counter() - start
        exit_code, err, seconds, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
        assert exit_code == 2 and err.strip().splitlines() == [expected], (args, err)
        assert heavy == [], args  # answered before torch and SAE-Lens are imported
        assert seconds < 1.0 and wall < 2.0, (args, seconds, wall)


# --- sweeps -------------------------------------------------------------------------------------


def test_a_sweep_stops_before_writing_when_any_variant_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "base: {samples: 2048, d_sae: 64}\nvariants:\n"
        "  - {name: fine, architecture: standard}\n"
        "  - {name: big-k, architecture: tsae, k: 600}\n"
    )
    proc = sae_lens("sweep", "s.yaml", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: s.yaml: variant big-k: SAE config: k=600: BatchTopK keeps k latents per token on "
        "average, so k must be in (0, d_sae=64]; lower k or raise d_sae (change it with --set "
        "FIELD=VALUE)"
    ]
    assert not (tmp_path / "out").exists()  # no sweep.json, no variant folder


def test_the_sweep_interrupt_message_says_what_resumes_a_sweep() -> None:
    from sae_lens_ext.errors import INTERRUPTED, CliError, TrainingInterrupted
    from sae_lens_ext.run.sweep import Variant, interrupted

    def message(checkpoint: Path | None) -> str:
        try:
            try:
                raise TrainingInterrupted(7, checkpoint)
            except TrainingInterrupted as exc:
                raise CliError(str(exc), INTERRUPTED) from exc
        except CliError as exc:
            error = interrupted(Variant("a-s1", {}, {}), exc)
        assert error.exit_code == INTERRUPTED
        return error.format_message()

    saved = message(Path("out/a-s1/checkpoints/7168"))
    assert "--resume" not in saved
    assert saved == (
        "sweep interrupted in variant a-s1 after step 7 (checkpoint saved to "
        "out/a-s1/checkpoints/7168); rerun the same sweep command to continue: finished "
        "variants are skipped, this one resumes from its checkpoint"
    )
    assert message(None).endswith("no checkpoint saved); rerun the same sweep command to "
                                  "continue: finished variants are skipped, this one trains "
                                  "again from the start")  # fmt: skip


# --- demos --------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_readme_demos_run_one_after_the_other(tmp_path: Path) -> None:
    first = sae_lens("demo", *TINY_DEMO, cwd=tmp_path)
    second = sae_lens("demo", "--architecture", "temporal_consistency", *TINY_DEMO, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    for architecture in ("freq_ordered", "temporal_consistency"):
        folder = tmp_path / f"sae-lens-demo-{architecture}"
        assert json.loads((folder / "metrics.json").read_text())["architecture"] == architecture
    assert "written to sae-lens-demo-temporal_consistency/" in second.stdout
    again = sae_lens("demo", *TINY_DEMO, cwd=tmp_path)  # never overwritten
    assert again.returncode == 2 and "already holds a trained SAE" in again.stderr
    explicit = sae_lens("demo", "-o", "sae-lens-demo-temporal_consistency", *TINY_DEMO,
                        cwd=tmp_path)  # fmt: skip
    assert explicit.returncode == 2 and "pass --overwrite" in explicit.stderr


@pytest.mark.e2e
def test_a_short_demo_shows_a_resampler_through_trainer_settings(tmp_path: Path) -> None:
    short = [
        "demo",
        "--architecture",
        "temporal_consistency",
        "--samples",
        "1024",
        "--batch-size",
        "64",
        "--d-sae",
        "1024",
        "--eval-samples",
        "2048",
        "--progress",
        "none",
        "--set",
        "l1_coefficient=5",
        "--set",
        "resample_dead_every=4",
    ]
    results = run_cli_commands(
        [[*short, "-o", "default-window"], [*short, "-o", "window-2",
                                            "--set", "dead_feature_window=2"]],
        cwd=tmp_path, env=ENV,
    )  # fmt: skip
    for code, _, err in results:
        assert code == 0, err[-3000:]
    default, short_window = (
        json.loads((tmp_path / name / "metrics.json").read_text())
        for name in ("default-window", "window-2")
    )
    # 16 steps: the demo's default dead_feature_window (10 steps) leaves no time to resample
    assert default["resampled_latents"] == 0
    assert short_window["resampled_latents"] > 0
    assert short_window["trainer_config"] == {"dead_feature_window": 2}


@pytest.mark.e2e
def test_the_tsae_demo_keeps_its_latents_alive_and_says_why_its_mcc_is_low(
    tmp_path: Path,
) -> None:
    proc = sae_lens("demo", "--architecture", "tsae", "--samples", "200000",
                    "--eval-samples", "20000", "--progress", "none", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "sae-lens-demo-tsae" / "metrics.json").read_text())
    # the reference's lr 3e-4 and auxiliary coefficient 1/32 left 179 of 512 dead here
    assert metrics["dead_latents"] < 60 and metrics["mcc"] > 0.44
    assert "the base is the limit" in proc.stdout and metrics["note"] in proc.stdout


# --- noise --------------------------------------------------------------------------------------


def test_warnings_are_one_line_each_and_said_once(capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    from sae_lens_ext import errors

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        errors.install_warning_format()
        for _ in range(3):
            warnings.warn(  # a multi-line call: Python would print its first line
                "Dataset is not tokenized. Pre-tokenizing will improve performance.",
                stacklevel=1,
            )
        warnings.warn("something else", UserWarning, stacklevel=1)
        warnings.warn("", RuntimeWarning, stacklevel=1)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"Warning: {errors.EXPLAINED_WARNINGS['Dataset is not tokenized']}",
        "Warning: something else",
        "Warning: RuntimeWarning",
    ]


@pytest.mark.e2e
def test_under_torchrun_only_rank_zero_prints_warnings_and_the_error(
    tiny_lm: TinyLM, tmp_path: Path
) -> None:
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    bad = sae_lens("demo", "--set", "x", cwd=tmp_path, launcher=torchrun)
    assert bad.returncode != 0
    assert [ln for ln in bad.stderr.splitlines() if ln.startswith("Error:")] == [
        "Error: --set 'x': expected FIELD=VALUE, e.g. --set l1_coefficient=2"
    ]
    run = sae_lens("train", *tiny_train_flags(tiny_lm), "--training_tokens", "4096",
                   "--output_path", "two", cwd=tmp_path, launcher=torchrun)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    warnings = [ln for ln in run.stderr.splitlines() if ln.startswith("Warning:")]
    assert warnings and len(warnings) == len(set(warnings)), run.stderr[-3000:]
    assert not [ln for ln in run.stderr.splitlines() if re.fullmatch(r"\s*warnings\.warn\(", ln)]


def test_sae_lens_plugins_piped_lists_every_name_in_full(tmp_path: Path) -> None:
    proc = sae_lens("plugins", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert rows[0] == ["plugin", "distribution", "architectures", "loss terms", "resampler",
                       "status"]  # fmt: skip
    by_name = {row[0]: row for row in rows[1:]}
    assert all(len(row) == 6 for row in rows)
    assert by_name["worst_reconstructed_resampler"][4] == "yes"
    assert by_name["temporal_consistency"][3] == "temporal_consistency, temporal_contrastive"
    assert "prefix_reconstruction" in by_name["freq_ordered"][3]
    assert "…" not in proc.stdout


def test_other_ranks_stay_quiet_unless_debugging(tmp_path: Path) -> None:
    quiet = sae_lens("demo", "--set", "x", cwd=tmp_path, env={"RANK": "1"})
    assert quiet.returncode == 2 and quiet.stderr == ""
    loud = sae_lens("demo", "--set", "x", cwd=tmp_path, env={"RANK": "1", "SAE_LENS_DEBUG": "1"})
    assert loud.returncode != 0 and "expected FIELD=VALUE" in loud.stderr


def test_the_data_error_names_the_flags_and_what_cannot_be_copied() -> None:
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    from sae_lens_ext.bench import BenchDataError, hub_datasets
    from sae_lens_ext.run.evaluate_bench import CLI_NAMES

    names = SparseProbingEvalConfig().dataset_names
    error = BenchDataError(bench="sparse_probing", hub_ids=hub_datasets(names),
                           dataset_names=names, reason="ConnectionError: offline")  # fmt: skip
    cli = error.advice(CLI_NAMES)
    assert "--data-dir DATA_DIR" in cli and "data_dir=" not in cli
    copies = cli.split("provide copies of ", 1)[1].split(" as DATA_DIR", 1)[0]
    assert "europarl" not in copies and "github-code" not in copies and "ag_news" in copies
    kept = cli.split("--bench-option sparse_probing.dataset_names=", 1)[1].split(",")
    assert kept == [n for n in names if "europarl" not in n and "github-code" not in n]
    assert "data_dir=DATA_DIR" in str(error)  # the Python API names its own settings


def test_absorption_on_a_vocabulary_missing_a_letter_is_one_clear_line() -> None:
    from sae_lens_ext.bench import ModelTooSmallError
    from sae_lens_ext.bench.absorption import missing_letter_error

    error = missing_letter_error("tiny", KeyError(9))
    assert isinstance(error, ModelTooSmallError)
    assert "no word starting with 'j'" in str(error) and "tiny" in str(error)
    other = KeyError("frequency_ordering")
    assert missing_letter_error("tiny", other) is other
