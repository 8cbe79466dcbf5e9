"""Peak memory of SAE-Bench's evaluations run through ``sae_lens_ext.bench`` at Gemma-2-2B width.

A random ``d_in``-wide GPT-2 (one layer, saved locally) and a random SAE of
``d_in x d_sae`` (default 2304 x 16384, a Gemma-2-2B residual SAE) are evaluated on
the offline world of ``tests/bench_world.py``. Each measurement runs in a fresh
process and reports its peak resident memory (``ru_maxrss``): ``load`` only loads
the model and the SAE (``prepared_run``); each bench then runs alone on top of that.
The difference is what the evaluation needs beyond the model and the SAE.

    python benchmarks/bench_memory.py --benches core,scr,tpp,sparse_probing,absorption
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# SAE-Bench's defaults except how much data is read and how many SCR/TPP thresholds
# (memory is per batch and per threshold)
SETTINGS = {
    "core": {"n_eval_reconstruction_batches": 2, "n_eval_sparsity_variance_batches": 1},
    "absorption": {"max_k_value": 3},
    "sparse_probing": {
        "dataset_names": ["LabHC/bias_in_bios_class_set1"],
        "probe_train_set_size": 80,
        "probe_test_set_size": 40,
    },
    "scr": {
        "dataset_names": ["LabHC/bias_in_bios_class_set1"],
        "column1_vals_lookup": {"LabHC/bias_in_bios_class_set1": [("professor", "nurse")]},
        "train_set_size": 80,
        "test_set_size": 40,
        "n_values": [2, 500],  # each threshold is one more pass at the same memory
    },
    "tpp": {
        "dataset_names": ["LabHC/bias_in_bios_class_set1"],
        "train_set_size": 80,
        "test_set_size": 40,
        "n_values": [2, 500],
    },
}


def measure(root: Path, bench: str, d_sae: int) -> dict:
    """In this process: load (and run ``bench`` unless it is ``load``); peak RSS."""
    import torch

    from sae_lens_ext.bench import BenchSettings, prepared_run, run_bench
    from tests.bench_world import World, random_sae

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    world = World(root / "model", root / "data", json.loads((root / "world.json").read_text())["d"])
    sae = random_sae(world, "freq_ordered", d_sae, "transformer.h.0")
    settings = BenchSettings(device="cpu", data_dir=world.data_dir, overrides=SETTINGS)
    start = time.perf_counter()
    if bench == "load":
        with prepared_run(sae, settings, root / "out"):
            pass
    else:
        run_bench(sae, [bench], settings, root / "out")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"bench": bench, "peak_gib": peak_kib / 2**20, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=2304)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--benches", default="core,scr,tpp,sparse_probing")
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_memory"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.root, args.one, args.d_sae)))
        return
    from tests.bench_world import build_world

    if not (args.root / "world.json").is_file():
        build_world(args.root, d_model=args.d_in, n_layers=1)
        (args.root / "world.json").write_text(json.dumps({"d": args.d_in}))
    sae_gib = 2 * args.d_in * args.d_sae * 4 / 2**30
    print(
        f"d_in={args.d_in} d_sae={args.d_sae}: SAE weights {sae_gib:.2f} GiB (float32); "
        f"a dense d_sae x d_sae float64 matrix would be {args.d_sae**2 * 8 / 2**30:.2f} GiB"
    )
    print("| measurement | peak RSS (GiB) | above load (GiB) | seconds |")
    print("|---|---|---|---|")
    base = None
    for bench in ["load", *args.benches.split(",")]:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", bench, "--root", str(args.root),
             "--d-sae", str(args.d_sae)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )  # fmt: skip
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        base = row["peak_gib"] if base is None else base
        print(f"| {bench} | {row['peak_gib']:.2f} | {row['peak_gib'] - base:+.2f} | "
              f"{row['seconds']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
