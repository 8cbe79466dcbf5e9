"""``sae-lens``: fast checks (help speed, argument plumbing) and every user error's message."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import TinyLM, run_python, subprocess_env

SAE_LENS = [sys.executable, "-c", "from sae_lens_ext.cli import cli; cli(prog_name='sae-lens')"]


def sae_lens(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``sae-lens`` command in a fresh, offline interpreter."""
    return subprocess.run(
        [*SAE_LENS, *args],
        env=subprocess_env({"OMP_NUM_THREADS": "1"}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def lm_flags(tiny: TinyLM, output: Path, *extra: str) -> list[str]:
    return [
        "--model_class_name", "AutoModelForCausalLM",
        "--model_name", str(tiny.model_dir),
        "--hook_name", tiny.hook_name,
        "--dataset_path", str(tiny.dataset_dir),
        "--streaming", "False",
        "--is_dataset_tokenized", "False",
        "--context_size", str(tiny.context_size),
        "--d_in", str(tiny.d_in),
        "--d_sae", "128",
        "--training_tokens", "4096",
        "--train_batch_size_tokens", "256",
        "--store_batch_size_prompts", "8",
        "--n_batches_in_buffer", "32",
        "--output_path", str(output),
        "--progress", "none",
        *extra,
    ]  # fmt: skip


# --------------------------------------------------------------------------------------
# Fast
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--help"], ["train", "--help"]])
def test_help_is_fast_and_does_not_import_torch(args: list[str]) -> None:
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from sae_lens_ext.cli import cli\n"
        f"try:\n    cli.main({args!r}, prog_name='sae-lens')\n"
        "except SystemExit:\n    pass\n"
        "print('SECONDS', time.perf_counter() - t)\n"
        "print('HEAVY', sorted(m for m in ('torch', 'sae_lens', 'transformers') if m in sys.modules))\n"
    )
    start = time.perf_counter()
    proc = run_python(code)
    wall = time.perf_counter() - start
    assert "HEAVY []" in proc.stdout
    assert "Usage: sae-lens" in proc.stdout
    assert wall < 1.0, f"{args}: {wall:.2f} s"


def test_train_help_explains_upstream_flags() -> None:
    proc = sae_lens("train", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "python -m sae_lens.llm_sae_training_runner" in text
    assert "--help-options" in text and "--config" in text and "--resume" in text


def test_config_file_flattens_sections_and_cli_flags_win(tmp_path: Path) -> None:
    from sae_lens_ext.run.lm_config import config_file_options, flag_values, options_to_args

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model_name: ./m\nstreaming: false\nseqpos_slice: [1, null]\n"
        "model_kwargs: {a: 1}\nsae:\n  architecture: freq_ordered\n  d_in: 64\n"
        "logger:\n  log_to_wandb: true\n"
    )
    args = options_to_args(config_file_options(str(cfg)))
    assert args == [
        "--model_name", "./m", "--streaming", "False", "--seqpos_slice", "1", "None",
        "--model_kwargs", '{"a": 1}', "--architecture", "freq_ordered", "--d_in", "64",
        "--log_to_wandb", "True",
    ]  # fmt: skip
    assert flag_values([*args, "--d_in=32"], "d_in") == ["64", "32"]


def test_network_errors_are_recognised_through_the_cause_chain() -> None:
    from sae_lens_ext.run.lm_config import is_network_error, looks_local

    class LocalEntryNotFoundError(Exception):
        pass

    try:
        try:
            raise LocalEntryNotFoundError("x")
        except LocalEntryNotFoundError as inner:
            raise OSError("gpt2 is not a valid model identifier") from inner
    except OSError as exc:
        assert is_network_error(exc)
    assert not is_network_error(ValueError("shape mismatch"))
    assert looks_local("./data") and looks_local("a/b/c") and looks_local("x.jsonl")
    assert not looks_local("user/dataset")


# --------------------------------------------------------------------------------------
# User errors: every case of docs/cli.md's table runs in tests/test_cli_errors.py; here,
# the ones answered before SAE-Lens is imported (fast), and --debug / --help-options.
# --------------------------------------------------------------------------------------
def test_cheap_refusals_answer_before_sae_lens_is_imported(tmp_path: Path) -> None:
    trained = tmp_path / "done"
    trained.mkdir()
    (trained / "cfg.json").write_text("{}")
    (trained / "sae_weights.safetensors").write_bytes(b"")
    cases = {
        ("train", "--output_path", str(trained), "--dataset_path", "x"):
            f"Error: --output_path {trained} already holds a trained SAE; pass --overwrite to "
            "replace it or choose another --output_path",
        ("demo", "-o", str(trained)):
            f"Error: --output {trained} already holds a trained SAE; pass --overwrite to "
            "replace it or choose another --output",
        ("demo", "--bogus"):
            "Error: No such option '--bogus'. (see 'sae-lens demo --help')",
    }  # fmt: skip
    for args, expected in cases.items():
        start = time.perf_counter()
        proc = sae_lens(*args, cwd=tmp_path)
        assert time.perf_counter() - start < 3.0, args  # no torch / SAE-Lens import
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.strip().splitlines() == [expected], args
    assert (trained / "cfg.json").read_text() == "{}"  # nothing overwritten


@pytest.mark.e2e
def test_debug_raises_and_help_options_lists_upstream_options(
    tiny_lm: TinyLM, tmp_path: Path
) -> None:
    code = (
        "import contextlib, io\n"
        "from sae_lens_ext.cli import cli\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        cli.main(['train', '--architecture', 'freq_ordered', '--help-options'], prog_name='sae-lens')\n"
        "    except SystemExit as exc:\n"
        "        print('EXIT', exc.code)\n"
        "print('LISTING', '--ordering_coefficient' in out.getvalue(), '--training_tokens' in out.getvalue())\n"
        f"args = {lm_flags(tiny_lm, tmp_path / 'out', '--d_in', '32', '--debug')!r}\n"
        "try:\n"
        "    cli.main(['train', *args], prog_name='sae-lens')\n"
        "except SystemExit as exc:\n"
        "    print('DEBUG EXIT', exc.code)\n"
        "except Exception as exc:\n"
        "    print('DEBUG RAISED', type(exc).__name__)\n"
    )
    proc = run_python(code, env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert "LISTING True True" in proc.stdout
    assert "DEBUG RAISED CliError" in proc.stdout  # --debug: the exception propagates
    assert not (tmp_path / "out").exists()


def test_sae_lens_script_reports_one_line_without_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("sae-lens")
    if not script.exists():
        pytest.skip("the sae-lens console script is not installed in this environment")
    proc = subprocess.run(
        [str(script), "train", "--model_name", "./nope", "--dataset_path", "x"],
        env=subprocess_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: --model_name ./nope: no such folder; give the folder of a model saved with "
        "save_pretrained (and --model_class_name AutoModelForCausalLM)"
    ]
