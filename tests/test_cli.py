"""``sae-lens``: fast checks (help speed, argument plumbing) and every user error's message."""

from __future__ import annotations

import json
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
# User errors, as separate processes: cheap ones (caught before SAE-Lens is imported)
# --------------------------------------------------------------------------------------
def test_missing_paths_and_trained_output_are_refused(tmp_path: Path) -> None:
    trained = tmp_path / "done"
    trained.mkdir()
    (trained / "cfg.json").write_text("{}")
    (trained / "sae_weights.safetensors").write_bytes(b"")
    cases = {
        ("train", "--model_class_name", "AutoModelForCausalLM", "--model_name", "./no-model",
         "--dataset_path", "x.jsonl"):
            "Error: --model_name ./no-model: no such folder; give the folder of a model saved "
            "with save_pretrained (and --model_class_name AutoModelForCausalLM)",
        ("train", "--model_class_name", "AutoModelForCausalLM", "--model_name", str(tmp_path),
         "--dataset_path", "./no-data"):
            "Error: --dataset_path ./no-data: no such file or folder",
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
        proc = sae_lens(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.strip().splitlines() == [expected], args
    assert (trained / "cfg.json").read_text() == "{}"  # nothing overwritten


# --------------------------------------------------------------------------------------
# User errors that need SAE-Lens or the model: one fresh offline process runs the real
# command entry point (`cli.main`) for each, to pay SAE-Lens's import once.
# --------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_user_errors_give_one_line_naming_the_fix(tiny_lm: TinyLM, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = {
        "architecture": lm_flags(tiny_lm, out, "--architecture", "nope"),
        "flag": lm_flags(tiny_lm, out, "--bogus_flag", "3"),
        "d_in": lm_flags(tiny_lm, out, "--d_in", "32"),
        "hub_model": lm_flags(tiny_lm, out, "--model_class_name", "HookedTransformer",
                              "--model_name", "gpt2"),
        "hub_dataset": lm_flags(tiny_lm, out, "--dataset_path", "someone/some-dataset"),
        "cuda": lm_flags(tiny_lm, out, "--device", "cuda"),
        "window": lm_flags(tiny_lm, out, "--architecture", "temporal_consistency",
                           "--temporal_window", "5"),
        "help_options": ["--architecture", "freq_ordered", "--help-options"],
        "debug": lm_flags(tiny_lm, out, "--d_in", "32", "--debug"),
    }  # fmt: skip
    code = (
        "import contextlib, io, json, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from sae_lens_ext.cli import cli\n"
        f"cases = {json.dumps(cases)}\n"
        "results = {}\n"
        "for name, args in cases.items():\n"
        "    err, std = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):\n"
        "        try:\n"
        "            cli.main(['train', *args], prog_name='sae-lens')\n"
        "            code = 0\n"
        "        except SystemExit as exc:\n"
        "            code = exc.code\n"
        "        except Exception as exc:\n"
        "            code = 'raised ' + type(exc).__name__\n"
        "    results[name] = [code, err.getvalue(), std.getvalue()]\n"
        "print('RESULTS', json.dumps(results))\n"
    )
    proc = run_python(code, env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])

    def error_line(name: str) -> str:
        rc, err, _ = results[name]
        assert rc == 2, (name, rc, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert not any("Traceback" in ln for ln in lines), (name, err)
        errors = [ln for ln in lines if ln.startswith("Error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], (name, err)
        return errors[0]

    assert error_line("architecture").startswith(
        "Error: unknown --architecture 'nope'; registered: "
    )
    registered = error_line("architecture").split("registered: ")[1].split(", ")
    assert {"standard", "freq_ordered", "temporal_consistency"} <= set(registered)
    assert error_line("flag") == (
        "Error: unrecognized arguments: --bogus_flag 3 (list the options with: "
        "sae-lens train --architecture ARCH --help-options)"
    )
    assert error_line("d_in") == (
        f"Error: --d_in 32 does not match hook {tiny_lm.hook_name} of {tiny_lm.model_dir} "
        f"(width {tiny_lm.d_in}); set --d_in {tiny_lm.d_in}"
    )
    assert error_line("hub_model").startswith(
        "Error: --model_name gpt2 is not a local path and the Hugging Face Hub cannot be "
        "reached (offline); use a local path instead: --model_class_name AutoModelForCausalLM"
    )
    assert error_line("hub_dataset").startswith(
        "Error: --dataset_path someone/some-dataset is not a local path and the Hugging Face "
        "Hub cannot be reached (offline); use a local path instead: --dataset_path"
    )
    assert error_line("cuda").startswith("Error: --device cuda: CUDA is not available here")
    assert error_line("window") == (  # window SAEs get whole windows of positions
        "Error: context_size=32 (after seqpos_slice): the SAE trains on windows of 5 "
        "consecutive positions, so windows would straddle two sequences; set context_size "
        "to a multiple of 5"
    )
    rc, _, listing = results["help_options"]  # the slow, full listing of upstream options
    assert rc == 0 and "--ordering_coefficient" in listing and "--training_tokens" in listing
    assert results["debug"][0] == "raised CliError"  # --debug: the exception propagates
    assert not out.exists()  # a refused run writes nothing, not even an empty folder


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
