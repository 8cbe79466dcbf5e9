"""Wall time of ``sae-lens train`` against upstream's runner for the same run, end to end.

The same training run (the tiny local GPT-2 of ``tests/helpers.py``, its JSONL text, every
flag the same) is launched as ``python -m sae_lens.llm_sae_training_runner`` (upstream) and
as ``sae-lens train`` (ours), in fresh processes, alternately (A B B A A B ...), so that
load from other processes falls on both. Each run's wall time (process start to exit:
interpreter start-up, imports, model and data loading, the activation-norm estimate,
training, saving) and CPU time (user + system of the child) are recorded; the table gives
the medians and the median of the per-pair ratios.

    .venv/bin/python benchmarks/train_e2e_benchmark.py --tokens 1000000 --pairs 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from smoke import smoke_argv

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled"}  # fmt: skip


def run_flags(world: Path, args: argparse.Namespace) -> list[str]:
    """The flags both commands get (upstream's names)."""
    return [
        "--architecture", args.architecture, "--model_class_name", "AutoModelForCausalLM",
        "--model_name", str(world / "model"), "--hook_name", "transformer.h.0",
        "--dataset_path", str(world / "dataset"), "--streaming", "False",
        "--is_dataset_tokenized", "False", "--context_size", "32", "--d_in", "64",
        "--d_sae", str(args.d_sae), "--training_tokens", str(args.tokens),
        "--train_batch_size_tokens", str(args.batch), "--store_batch_size_prompts", "32",
        "--n_batches_in_buffer", str(max(64, -(-2 * args.batch // 32))),
        "--n_batches_for_norm_estimate", "25",
        "--normalize_activations", "expected_average_only_in", "--device", "cpu",
        "--dtype", "float32", "--n_checkpoints", "0", "--seed", "0",
    ]  # fmt: skip


def commands(root: Path, args: argparse.Namespace, i: int) -> dict[str, list[str]]:
    flags = run_flags(world_dir(root, args.docs), args)
    python, bin_dir = sys.executable, Path(sys.executable).parent
    return {
        "upstream runner": [
            python,
            "-m",
            "sae_lens.llm_sae_training_runner",
            *flags,
            "--log_to_wandb",
            "False",
            "--output_path",
            str(root / f"up-{i}"),
        ],
        "sae-lens train": [
            str(bin_dir / "sae-lens"),
            "train",
            *flags,
            "--output_path",
            str(root / f"ours-{i}"),
        ],
    }


def timed(argv: list[str], log: Path) -> tuple[float, float]:
    """Run ``argv`` to completion; its wall time and its CPU time (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **OFFLINE}, cwd=log.parent)  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{argv[:3]} exited {proc.returncode}; see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def clear_outputs(root: Path, i: int) -> None:
    """Remove pair ``i``'s run folders (the benchmark's scratch)."""
    for out in ("up", "ours"):
        shutil.rmtree(root / f"{out}-{i}", ignore_errors=True)


def world_dir(root: Path, n_docs: int) -> Path:
    """The tiny model and its dataset of ``n_docs`` documents (one folder per size)."""
    return root / f"world-{n_docs}"


def ensure_world(root: Path, n_docs: int) -> None:
    world = world_dir(root, n_docs)
    if (world / "model").exists() and (world / "dataset").exists():
        return
    from tests.helpers import build_tiny_lm

    os.environ.update(OFFLINE)
    build_tiny_lm(world, n_docs=n_docs)


def summary(times: dict[str, list[tuple[float, float]]]) -> str:
    up, ours = times["upstream runner"], times["sae-lens train"]
    lines = ["| command | runs | median wall (s) | median CPU (s) | wall / upstream (median of pairs) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, rows in times.items():
        ratio = statistics.median(o[0] / u[0] for o, u in zip(rows, up, strict=True))
        lines.append(
            f"| {name} | {len(rows)} | {statistics.median(r[0] for r in rows):.1f} | "
            f"{statistics.median(r[1] for r in rows):.1f} | {ratio:.3f} |"
        )
    cpu = statistics.median(o[1] / u[1] for o, u in zip(ours, up, strict=True))
    return (
        "\n".join(lines) + f"\n\nCPU time, sae-lens train / upstream (median of pairs): {cpu:.3f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/sae_lens_ext_e2e"))
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--architecture", default="standard")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--docs", type=int, default=4000, help="documents of the tiny dataset")
    parser.add_argument("--json", default=None)
    smaller = ["--tokens", "8192", "--batch", "1024", "--pairs", "1", "--docs", "200"]
    args = parser.parse_args(smoke_argv(argv, smaller))
    ensure_world(args.root, args.docs)
    times: dict[str, list[tuple[float, float]]] = {"upstream runner": [], "sae-lens train": []}
    for i in range(args.pairs):
        clear_outputs(args.root, i)  # an interrupted earlier run may have left them
        order = list(commands(args.root, args, i).items())
        for name, argv_i in order[::-1] if i % 2 else order:
            times[name].append(timed(argv_i, args.root / f"{name.split()[0]}-{i}.log"))
            print(f"pair {i}: {name}: wall {times[name][-1][0]:.1f} s, CPU {times[name][-1][1]:.1f} s",
                  flush=True)  # fmt: skip
        clear_outputs(args.root, i)
    print(summary(times))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args) | {"root": str(args.root)},
                                               "times": times}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
