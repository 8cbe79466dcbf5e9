"""End to end, in fresh offline processes: the embedded demo (both architectures), Ctrl-C and
``--resume`` (bit-identical), LM training on a tiny local model from a ``--config`` file,
``evaluate``/``plots``, and the Hub round trip (upload, then ``from_pretrained`` offline)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, TinyLM, run_python, subprocess_env
from tests.test_cli_hub import REPO_ID, SAE_ID

CLI = [sys.executable, "-c", "from sae_lens_ext.cli import cli; cli(prog_name='sae-lens')"]
DEMO = ["demo", "--samples", "60000", "--eval-samples", "5000", "--log-every", "5"]
ENV = {"OMP_NUM_THREADS": "1"}


def sae_lens(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *args],
        env=subprocess_env(ENV),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"sae-lens {args} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def log_without_times(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")} for r in rows]


@pytest.fixture(scope="session")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One uninterrupted ``sae-lens demo`` (freq_ordered), shared by several tests."""
    root = tmp_path_factory.mktemp("demo")
    proc = sae_lens(*DEMO, "-o", "ref", "--progress", "plain", cwd=root)
    return root / "ref", proc


@pytest.mark.e2e
def test_demo_writes_sae_metrics_plots_and_prints_results(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, proc = demo_run
    for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "metrics.json",
                 "training_log.jsonl", "plots/training_curves.png",
                 "plots/feature_frequencies.png", "plots/frequency_ordering.png",
                 "demo_data/synthetic_model/synthetic_model.safetensors"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not list(out.glob(".tmp-*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["architecture"] == "freq_ordered"
    assert metrics["training_samples"] >= 60000
    assert 0 < metrics["mcc"] <= 1 and -1 <= metrics["ordering_spearman"] <= 1
    assert 0 < metrics["explained_variance"] <= 1 and metrics["l0"] > 0
    for label in ("ground-truth MCC", "explained variance", "L0", "dead latents",
                  "ordering quality"):  # fmt: skip
        assert label in proc.stdout, label
    # not a terminal: plain progress lines with rate and ETA on stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("step ")]
    assert len(lines) >= 3 and all("samples/s" in ln and "ETA" in ln for ln in lines)
    log = log_without_times(out / "training_log.jsonl")
    assert [r["step"] for r in log][:3] == [5, 10, 15] and "mse_loss" in log[0]
    from sae_lens import SAE

    sae = SAE.load_from_disk(out)
    assert type(sae).__name__ == "FreqOrderedSAE" and sae.cfg.d_sae == 512


@pytest.mark.e2e
def test_ctrl_c_then_resume_is_bit_identical(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    reference, _ = demo_run
    args = [*CLI, *DEMO, "-o", "run", "--progress", "plain"]
    proc = subprocess.Popen(args, env=subprocess_env(ENV), cwd=tmp_path, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until training runs, then press Ctrl-C
        if line.startswith("step "):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted after step ") and last.endswith(
        "; rerun the same command with --resume"
    ), last
    run = tmp_path / "run"
    assert not (run / "cfg.json").exists()  # no final SAE yet
    (checkpoint,) = (run / "checkpoints").iterdir()
    assert (checkpoint / "loop_state.pt").is_file()

    resumed = sae_lens(*DEMO, "-o", "run", "--progress", "none", "--resume", cwd=tmp_path)
    assert f"Resuming from run/checkpoints/{checkpoint.name}" in resumed.stderr
    for name in ("sae_weights.safetensors", "sparsity.safetensors"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    # same content; key order varies with the interpreter's string hash seed
    assert json.loads((run / "cfg.json").read_text()) == json.loads(
        (reference / "cfg.json").read_text()
    )
    assert log_without_times(run / "training_log.jsonl") == log_without_times(
        reference / "training_log.jsonl"
    )
    drop = {"train_time_s", "total_time_s"}
    got, want = (
        {k: v for k, v in json.loads((p / "metrics.json").read_text()).items() if k not in drop}
        for p in (run, reference)
    )
    assert got == want


@pytest.mark.e2e
def test_demo_temporal_consistency_reports_consistency(tmp_path: Path) -> None:
    proc = sae_lens("demo", "--architecture", "temporal_consistency", "--samples", "40000",
                    "-o", "tc", "--progress", "none", cwd=tmp_path)  # fmt: skip
    metrics = json.loads((tmp_path / "tc" / "metrics.json").read_text())
    assert metrics["architecture"] == "temporal_consistency"
    for key in ("mcc", "explained_variance", "l0", "dead_latents", "mean_autocorrelation",
                "autocorr_error", "true_mean_autocorrelation", "redundant_pairs"):  # fmt: skip
        assert key in metrics, key
    assert "latent lag-1 autocorrelation" in proc.stdout
    assert (tmp_path / "tc" / "plots" / "training_curves.png").is_file()
    # evaluate draws fresh sequences from the saved ground truth (demo_data/)
    again = sae_lens("evaluate", "tc", "--samples", "8192", "--json", cwd=tmp_path)
    fresh = json.loads(again.stdout[again.stdout.index("{") :])
    assert fresh["mcc"] == pytest.approx(metrics["mcc"], abs=1e-6)  # same SAE, same truth
    assert fresh["true_mean_autocorrelation"] == pytest.approx(
        metrics["true_mean_autocorrelation"], abs=0.05
    )


@pytest.mark.e2e
def test_train_tiny_local_lm_from_config_file(tiny_lm: TinyLM, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model_class_name: AutoModelForCausalLM\nmodel_name: {tiny_lm.model_dir}\n"
        f"hook_name: {tiny_lm.hook_name}\ndataset_path: {tiny_lm.dataset_dir}\n"
        "streaming: false\nis_dataset_tokenized: false\n"
        f"context_size: {tiny_lm.context_size}\ntraining_tokens: 8192\n"
        "train_batch_size_tokens: 256\nstore_batch_size_prompts: 8\nn_batches_in_buffer: 32\n"
        f"sae:\n  architecture: freq_ordered\n  d_in: {tiny_lm.d_in}\n  d_sae: 256\n"
        "output_path: lm-out\n"
    )
    proc = sae_lens("train", "--config", str(config), "--d_sae", "128", "--log-every", "4",
                    "--progress", "plain", cwd=tmp_path)  # fmt: skip
    out = tmp_path / "lm-out"
    runner = json.loads((out / "runner_cfg.json").read_text())
    assert runner["sae"]["architecture"] == "freq_ordered"
    assert runner["sae"]["d_sae"] == 128  # the command line wins over the file
    assert runner["logger"]["log_to_wandb"] is False  # wandb off unless asked for
    assert runner["checkpoint_path"] == str(Path("lm-out") / "checkpoints")
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 8, 12, 16, 20, 24, 28, 32]
    assert "Trained freq_ordered SAE" in proc.stdout
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == tiny_lm.hook_name
    assert cfg["metadata"]["model_name"] == str(tiny_lm.model_dir)

    again = sae_lens("train", "--config", str(config), cwd=tmp_path, check=False)
    assert again.returncode == 2 and "already holds a trained SAE" in again.stderr


@pytest.mark.e2e
def test_evaluate_and_compare_runs(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """In-process (click's runner): SAE-Lens is already imported by the test above."""
    from click.testing import CliRunner

    from sae_lens_ext.cli import cli

    out, _ = demo_run
    runner = CliRunner()
    result = runner.invoke(cli, ["evaluate", str(out), "--samples", "20000", "--json"])
    assert result.exit_code == 0, result.output
    fresh = json.loads(result.stdout[result.stdout.index("{") :])
    saved = json.loads((out / "metrics.json").read_text())
    assert fresh["mcc"] == pytest.approx(saved["mcc"], abs=1e-6)  # decoder only: same SAE
    assert fresh["explained_variance"] == pytest.approx(saved["explained_variance"], abs=0.05)
    assert fresh["l0"] == pytest.approx(saved["l0"], rel=0.1)
    result = runner.invoke(cli, ["plots", str(out), "-o", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp" / "metrics_comparison.png").stat().st_size > 1000
    assert (tmp_path / "cmp" / "training_curves.png").stat().st_size > 1000


@pytest.mark.e2e
def test_upload_then_from_pretrained_offline(demo_run: tuple[Path, Any], tmp_path: Path) -> None:
    out = demo_run[0]
    record = tmp_path / "hub.json"
    cache = tmp_path / "hf-cache"
    env = {"HF_HUB_CACHE": str(cache), "HF_TOKEN": "hf_fake_token", "OMP_NUM_THREADS": "1"}
    online = {**env, "HF_HUB_OFFLINE": "0"}

    # 1. upload the demo's freq_ordered SAE with `sae-lens upload` (the CLI in-process,
    #    so that the fake network is in place).
    run_python(
        "import sys\n"
        "from sae_lens_ext.cli import cli\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.test_cli_hub import install_fake_hub\n"
        f"install_fake_hub({str(record)!r})\n"
        f"cli(['upload', {str(out)!r}, '--repo-id', {REPO_ID!r}, '--sae-id', {SAE_ID!r}],"
        " standalone_mode=False)\n"
        # 2. download through huggingface_hub's own code (online, to the fake hub): it
        #    writes the cache (blobs/, snapshots/<commit>/, refs/main) as it always does.
        "from huggingface_hub import hf_hub_download\n"
        "for name in ('cfg.json', 'sae_weights.safetensors', 'sparsity.safetensors'):\n"
        f"    hf_hub_download({REPO_ID!r}, {SAE_ID!r} + '/' + name)\n",
        env=online,
        cwd=tmp_path,
    )
    state = json.loads(record.read_text())
    sent = {
        path: base64.b64decode(c)
        for commit in state["commits"]
        for path, c in commit["files"].items()
    }
    expected = {
        f"{SAE_ID}/{name}"
        for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors")
    } | {"README.md"}
    assert set(sent) == expected, state["requests"]
    for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
        assert sent[f"{SAE_ID}/{name}"] == (out / name).read_bytes()
    cfg = json.loads(sent[f"{SAE_ID}/cfg.json"])
    assert cfg["architecture"] == "freq_ordered" and cfg["d_in"] == 64 and cfg["d_sae"] == 512
    assert f'SAE.from_pretrained("{REPO_ID}", "<sae_id>")' in sent["README.md"].decode()
    assert "POST /api/repos/create" in state["requests"]

    from huggingface_hub import scan_cache_dir

    repos = {r.repo_id: r for r in scan_cache_dir(cache).repos}
    assert REPO_ID in repos and "main" in {
        ref for rev in repos[REPO_ID].revisions for ref in rev.refs
    }

    # 3. a fresh, offline process loads it with upstream's from_pretrained.
    proc = run_python(
        "import torch\n"
        "from sae_lens import SAE\n"
        f"sae = SAE.from_pretrained({REPO_ID!r}, {SAE_ID!r})\n"
        f"ref = SAE.load_from_disk({str(out)!r})\n"
        "assert type(sae).__name__ == type(ref).__name__, (type(sae), type(ref))\n"
        "x = torch.randn(32, 64)\n"
        "assert torch.equal(sae.encode(x), ref.encode(x))\n"
        "assert torch.equal(sae(x), ref(x))\n"
        "print('loaded', type(sae).__name__)\n",
        env={**env, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
    )
    assert "loaded FreqOrderedSAE" in proc.stdout


def test_help_options_lists_the_architectures_presets(tmp_path: Path) -> None:
    """``--help-options`` lists upstream's options, then the architecture's named presets
    with the flags SAE-Lens's own runner takes for each."""
    listing = sae_lens("train", "--architecture", "freq_ordered", "--help-options", cwd=tmp_path)
    text = listing.stdout
    assert "--prefix_warm_up_fraction" in text and "--training_tokens" in text
    presets = text.split("Presets of freq_ordered (--preset NAME; your own flags win):", 1)[1]
    for i in range(2, 10):
        assert f"  log-run-{i}: log run {i}" in presets
    run9 = presets.split("log-run-9:", 1)[1]
    assert "flags: --l1_coefficient 1.0 --sort_latents_every 0 --prefix_coefficient 0.0" in run9
    assert "--attention True --attention_window 8" in run9
    other = sae_lens("train", "--architecture", "standard", "--help-options", cwd=tmp_path)
    assert "No presets registered for this architecture." in other.stdout
