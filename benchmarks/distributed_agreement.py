"""How closely 2 processes (torchrun, gloo on CPUs) reproduce the SAE of 1 process.

Each configuration is one ``sae-lens train`` on the test suite's tiny local model (live
activations, float32 unless said), run in one process with ``--data-streams 2`` and in
two processes: the same global batches, so the SAEs differ only by float rounding (the
ranks' gradients are averaged, and the buffers reduced, in another order) and by how
training amplifies it. For the decoder and for all saved tensors it prints the largest
absolute difference, that difference relative to the tensor's largest value (the measure
``docs/scale.md`` quotes) and the relative Frobenius norm of the difference.

    .venv/bin/python benchmarks/distributed_agreement.py              # ~10 min on 2 cores
    .venv/bin/python benchmarks/distributed_agreement.py --json agreement.json

All configurations run in one interpreter per mode (``tests/distributed_driver.py``), so
SAE-Lens is imported once per process. ``SAE_LENS_EXT_SMOKE=1`` (the docs test) runs one
short configuration in one process only: its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from smoke import is_smoke

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BASE = [
    "--model_class_name", "AutoModelForCausalLM", "--hook_name", "transformer.h.0",
    "--d_in", "64", "--streaming", "False", "--is_dataset_tokenized", "False",
    "--context_size", "32", "--train_batch_size_tokens", "256",
    "--store_batch_size_prompts", "8", "--n_batches_in_buffer", "32",
    "--normalize_activations", "expected_average_only_in", "--progress", "none",
]  # fmt: skip
LONG = ["--training_tokens", "49152"]
#: a wider, sparser SAE whose latents die within the run, resampled every 6 steps
RESAMPLE = ["--d_sae", "512", "--l1_coefficient", "5", "--resample_dead_every", "6",
            "--dead_feature_window", "6"]  # fmt: skip
FO = ["--architecture", "freq_ordered", "--ordering_rows", "0"]  # batch-decomposable
NO_SORT = ["--sort_latents_every", "0"]  # (with sorting, freq_ordered resamples no latent
#                                          its frequency buffer still counts as alive)
#: name: (what it varies, flags); 48 steps of 256 tokens unless said. freq_ordered runs
#: use ``ordering_rows=0`` (its ordering gradient on every row: exact under data
#: parallelism) but for "fo-rows", upstream's default 128 rows per rank's block.
CONFIGS = {
    "standard": ("standard, lr 3e-4", ["--architecture", "standard"]),
    "standard-lr": ("standard, lr 3e-3", ["--architecture", "standard", "--lr", "3e-3"]),
    "standard-long": ("standard, lr 3e-4, 192 steps", ["--architecture", "standard", *LONG]),
    "standard-lr-long": (
        "standard, lr 3e-3, 192 steps",
        ["--architecture", "standard", "--lr", "3e-3", *LONG],
    ),
    "fo": ("freq_ordered, lr 3e-4, sort every 25 steps", FO),
    "fo-lr": ("freq_ordered, lr 3e-3, sort every 25 steps", [*FO, "--lr", "3e-3"]),
    "fo-lr-long": (
        "freq_ordered, lr 3e-3, sort every 25 steps, 192 steps",
        [*FO, "--lr", "3e-3", *LONG],
    ),
    "fo-lr-long-nosort": (
        "freq_ordered, lr 3e-3, no sort, 192 steps",
        [*FO, "--lr", "3e-3", *NO_SORT, *LONG],
    ),
    "fo-resample": ("freq_ordered, lr 3e-4, resampling", [*FO, *NO_SORT, *RESAMPLE]),
    "fo-lr-resample": (
        "freq_ordered, lr 3e-3, resampling",
        [*FO, "--lr", "3e-3", *NO_SORT, *RESAMPLE],
    ),
    "fo-lr-resample-long": (
        "freq_ordered, lr 3e-3, resampling, 192 steps",
        [*FO, "--lr", "3e-3", *NO_SORT, *RESAMPLE, *LONG],
    ),
    "fo-lr-resample-f64": (
        "freq_ordered, lr 3e-3, resampling, float64 SAE and activations",
        [*FO, "--lr", "3e-3", *NO_SORT, *RESAMPLE, "--dtype", "float64", "--sae.dtype", "float64"],
    ),
    "fo-rows": (
        "freq_ordered, lr 3e-4, sort every 25 steps, ordering_rows 128 (not batch-decomposable)",
        ["--architecture", "freq_ordered"],
    ),
}


def runs(model: Path, data: Path, names: list[str], tokens: int) -> dict[str, list[str]]:
    common = ["train", *BASE, "--model_name", str(model), "--dataset_path", str(data),
              "--d_sae", "128", "--training_tokens", str(tokens)]  # fmt: skip
    return {name: [*common, *CONFIGS[name][1]] for name in names}  # later flags win


def launch(commands: list[list[str]], cwd: Path, processes: int) -> None:
    spec = cwd / "runs.json"
    spec.write_text(json.dumps(commands))
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        if processes > 1
        else []
    )
    driver = str(REPO / "tests" / "distributed_driver.py")
    subprocess.run([sys.executable, *launcher, driver, str(spec)], cwd=cwd, check=True,
                   env={**_env(), "OMP_NUM_THREADS": "1"})  # fmt: skip


def _env() -> dict[str, str]:
    from tests.helpers import subprocess_env

    return subprocess_env()


def differences(one: Path, two: Path) -> dict[str, float]:
    """Largest |a - b|, relative to max |a|, and ||a - b|| / ||a||: for W_dec, and the
    largest of each over every saved tensor (weights, buffers, firing frequencies)."""
    from safetensors.torch import load_file

    def tensors(folder: Path) -> dict:
        sparsity = load_file(folder / "sparsity.safetensors")
        return {**load_file(folder / "sae_weights.safetensors"), **sparsity}

    a, b = tensors(one), tensors(two)
    out: dict[str, float] = {}  # W_dec_rows_off: a count
    logs = [(f / "training_log.jsonl").read_text().splitlines()[-1] for f in (one, two)]
    last = [json.loads(line) for line in logs]
    out["counts_agree"] = all(
        last[0].get(k) == last[1].get(k) for k in ("resampled_latents", "latent_sorts")
    )
    out["resampled"] = last[0].get("resampled_latents", 0)
    for key in a:
        x, y = a[key].double(), b[key].double()
        diff = (x - y).abs()
        scale, norm = float(x.abs().max()) or 1.0, float(x.norm()) or 1.0
        row = {"abs": float(diff.max()), "rel_max": float(diff.max()) / scale,
               "rel_norm": float((x - y).norm()) / norm}  # fmt: skip
        if key == "W_dec":  # rows (latents) off by more than 1 % of their norm
            row_diff = (x - y).norm(dim=1) / x.norm(dim=1).clamp_min(1e-30)
            out["W_dec_rows_off"] = int((row_diff > 0.01).sum())
        for measure, value in row.items():
            if key == "W_dec":
                out[f"W_dec_{measure}"] = value
            out[f"all_{measure}"] = max(out.get(f"all_{measure}", 0.0), value)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--tokens", type=int, default=12288, help="tokens per run (256 a step)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep", help="run in this (new) folder and keep the runs")
    args = parser.parse_args(argv)
    from tests.helpers import build_tiny_lm

    smoke = is_smoke()
    names = args.configs[:1] if smoke else args.configs
    tokens = 1024 if smoke else args.tokens
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        tiny = build_tiny_lm(root / "world")
        commands = runs(tiny.model_dir, tiny.dataset_dir, names, tokens)
        modes = {"one": 1} if smoke else {"one": 1, "two": 2}
        for mode, processes in modes.items():
            (root / mode).mkdir()
            streams = ["--data-streams", "2"] if processes == 1 else []
            launch([[*c, *streams, "--output_path", n] for n, c in commands.items()],
                   root / mode, processes)  # fmt: skip
        if smoke:
            print("smoke run: one process only, nothing to compare")
            return
        results = {n: differences(root / "one" / n, root / "two" / n) for n in names}
    print("| run | resampled (same count) | W_dec max abs | W_dec max / max abs | "
          "W_dec rel. Frobenius | W_dec rows off by > 1 % | all tensors max / max abs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        same = "yes" if r["counts_agree"] else "no"
        print(f"| {CONFIGS[name][0]} | {r['resampled']} ({same}) | {r['W_dec_abs']:.1e} | "
              f"{r['W_dec_rel_max']:.1e} | {r['W_dec_rel_norm']:.1e} | {r['W_dec_rows_off']} | "
              f"{r['all_rel_max']:.1e} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
