"""``sae-lens train`` on the tiny local model, for every registered architecture: a run
interrupted with a real SIGINT and resumed with ``--resume`` ends with the same SAE, byte
for byte, as the same run uninterrupted (the docs' flags; resampling, the periodic sort
and freq_ordered's prefix mode, which draws from the global generator, included).

Every run goes through ``sae-lens``'s entry point (``cli.main``) in one fresh interpreter,
so SAE-Lens is imported once: a watcher thread sends the process SIGINT once the run's
``training_log.jsonl`` has its first record (step ``LOG_EVERY``), exactly what Ctrl-C on
a terminal does; the loop stops at the next step boundary with exit code 130.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PYTHON, TinyLM, subprocess_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

LOG_EVERY = 4
#: Settings an architecture cannot train without.
REQUIRED = {"matryoshka_batchtopk": ["--matryoshka_widths", "32", "128"]}
#: Variants besides the plain run of each architecture: resampling (a wider, sparser SAE,
#: so that latents die within the run), the periodic sort as often as the run allows, and
#: prefix mode (random prefix lengths each step).
VARIANTS = {
    "freq_ordered-resample": [
        "--architecture", "freq_ordered", "--d_sae", "512", "--l1_coefficient", "5",
        "--lr", "3e-3", "--sort_latents_every", "0", "--resample_dead_every", "6",
        "--dead_feature_window", "6",
    ],
    "freq_ordered-sort": ["--architecture", "freq_ordered", "--sort_latents_every", "5"],
    "freq_ordered-prefix": ["--architecture", "freq_ordered", "--prefix_coefficient", "1"],
}  # fmt: skip

DRIVER = r"""
import json, os, signal, sys, threading, time
from pathlib import Path
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens_ext.cli import cli

common, required, variants = (json.loads(a) for a in sys.argv[1:4])
runs = {
    name: ["--architecture", name, *required.get(name.removesuffix("_with_loss_terms"), [])]
    for name in sorted(SAE_TRAINING_CLASS_REGISTRY)
}
runs.update(variants)

def sae_lens(args):
    try:
        cli.main(["train", *common, *args], prog_name="sae-lens", standalone_mode=True)
    except SystemExit as exc:
        return exc.code or 0
    return 0

def interrupt_when_logged(log, finished):
    def watch():
        while not (log.is_file() and log.read_text().strip()):
            if finished.wait(0.005):
                return  # the run ended (failed) before its first record
        os.kill(os.getpid(), signal.SIGINT)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread

codes = {}
for name, args in runs.items():
    ref = sae_lens([*args, "--output_path", f"ref/{name}"])
    finished = threading.Event()
    watcher = interrupt_when_logged(Path(f"run/{name}/training_log.jsonl"), finished)
    interrupted = sae_lens([*args, "--output_path", f"run/{name}"])
    finished.set()
    watcher.join()
    folder = Path(f"run/{name}/checkpoints")
    checkpoints = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    resumed = sae_lens([*args, "--output_path", f"run/{name}", "--resume"])
    codes[name] = [ref, interrupted, resumed, checkpoints]
print("CODES", json.dumps(codes))
"""


def common_flags(tiny: TinyLM) -> list[str]:
    return [
        "--model_class_name", "AutoModelForCausalLM", "--model_name", str(tiny.model_dir),
        "--hook_name", tiny.hook_name, "--d_in", str(tiny.d_in), "--d_sae", "128",
        "--dataset_path", str(tiny.dataset_dir), "--streaming", "False",
        "--is_dataset_tokenized", "False", "--context_size", str(tiny.context_size),
        "--training_tokens", "12288", "--train_batch_size_tokens", "256",
        "--store_batch_size_prompts", "4", "--n_batches_in_buffer", "16",
        "--normalize_activations", "expected_average_only_in",
        "--log-every", str(LOG_EVERY), "--progress", "none",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def resumed_runs(tiny_lm: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("resume")
    proc = subprocess.run(
        [PYTHON, "-c", DRIVER, *map(json.dumps, (common_flags(tiny_lm), REQUIRED, VARIANTS))],
        env=subprocess_env({"OMP_NUM_THREADS": "1"}),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert "CODES" in proc.stdout, proc.stderr[-6000:]
    return root, json.loads(proc.stdout.split("CODES ", 1)[1])


def test_every_architecture_and_variant_ran(resumed_runs: tuple[Path, dict]) -> None:
    _, codes = resumed_runs
    expected = {"standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated",
                "freq_ordered", "temporal_consistency", "tsae", *VARIANTS}  # fmt: skip
    assert expected <= set(codes)
    for name, (ref, interrupted, resumed, checkpoints) in codes.items():
        assert (ref, interrupted, resumed) == (0, 130, 0), name
        assert len(checkpoints) == 1, (name, checkpoints)  # the interrupt's checkpoint


def test_resumed_runs_equal_uninterrupted_runs_bit_for_bit(resumed_runs: tuple[Path, dict]):
    root, codes = resumed_runs
    for name in codes:
        ref, run = root / "ref" / name, root / "run" / name
        for file in ("sae_weights.safetensors", "sparsity.safetensors"):
            assert (run / file).read_bytes() == (ref / file).read_bytes(), (name, file)
        steps = [json.loads(line)["step"] for line in (run / "training_log.jsonl").open()]
        assert steps == list(range(LOG_EVERY, 49, LOG_EVERY)), name  # 48 steps, no repeats
        want = json.loads((ref / "metrics.json").read_text())["last_step"]
        got = json.loads((run / "metrics.json").read_text())["last_step"]
        for key in ("time_s", "samples_per_s"):
            want.pop(key), got.pop(key)
        assert got == want, name


def test_resampling_and_sorting_left_their_trace(resumed_runs: tuple[Path, dict]) -> None:
    root, _ = resumed_runs

    def last(run: str) -> dict:
        return json.loads((root / run / "training_log.jsonl").read_text().splitlines()[-1])

    assert last("ref/freq_ordered-sort")["latent_sorts"] == 9  # every 5 of 48 steps
    assert last("run/freq_ordered-sort")["latent_sorts"] == 9  # counted on after --resume
    assert last("ref/freq_ordered-resample")["resampled_latents"] > 0
    assert last("ref/freq_ordered")["latent_sorts"] == 1  # the default: every 25 steps
