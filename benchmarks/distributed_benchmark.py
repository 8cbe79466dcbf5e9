"""Benchmark: training samples/s of one SAE on 1 process vs data-parallel on N (torchrun).

Each measurement is a fresh process group: the core's training loop (upstream's
``SAETrainer``) trains an SAE on SAE-Lens's ``SyntheticModel`` data split into
``--data-streams`` streams (each rank generates its own streams), with the same global
batch on every configuration. The rate counts global samples over the steps after
``--warmup`` (the normalisation estimate, compilation of nothing, first allocations are
excluded). Configurations run interleaved, ``--repeats`` times, so that they share the
machine's load; the table gives the median and the range.

    .venv/bin/python benchmarks/distributed_benchmark.py                 # CPU: ~10 min
    .venv/bin/python benchmarks/distributed_benchmark.py --device cuda --gpus 1 2 4 8

On CPUs the configurations are 1 process x 1 thread and N processes x 1 thread (gloo),
and with ``--with-threads`` 1 process x N threads (the same cores used by threads; on a
busy machine OpenMP threads that spin at barriers can make it far slower than 1 x 1).
On GPUs: 1..N processes, one GPU each (NCCL). ``SAE_LENS_EXT_SMOKE=1`` (the docs test)
shrinks the run to a few steps of the small size on one process: its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from smoke import smoke_argv

REPO = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT_S = 900  # one measurement (a hung process group fails instead of waiting)
#: ``SAE_LENS_EXT_SMOKE=1`` (the docs test): one short launch of one process (the
#: 2-process path is tests/test_distributed.py's, where it costs a launch less)
SMOKE = ["--sizes", "small", "--steps", "2", "--warmup", "1", "--repeats", "1", "--cores", "1"]
SIZES = {  # name: (d_in, d_sae, global batch)
    "small": (64, 512, 1024),
    "large": (256, 4096, 4096),
}


# --------------------------------------------------------------------------------------
# worker: one measurement (run under torchrun for N > 1)
# --------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import torch

    from sae_lens_ext.training import distributed

    torch.set_num_threads(args.threads)
    with distributed.process_group(args.device) as device:
        loop, batch = build(args, device)
        loop.run()
        times = loop.step_times
        measured = times[args.warmup :]
        seconds = measured[-1] - times[args.warmup - 1]
        if distributed.is_main():
            print(
                "RESULT "
                + json.dumps(
                    {
                        "processes": distributed.world_size(),
                        "threads": args.threads,
                        "steps": len(measured),
                        "samples_per_s": len(measured) * batch / seconds,
                    }
                ),
                flush=True,
            )


def build(args: argparse.Namespace, device: str) -> tuple[Any, int]:
    """The SAE, trainer, data and a loop that timestamps every step."""
    import torch
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.registry import get_sae_training_class
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_lens_ext.data.streams import stream_batches
    from sae_lens_ext.data.synthetic import DemoDataOptions, SyntheticModelData
    from sae_lens_ext.run.loop import TrainingLoop, seed_everything

    d_in, d_sae, batch = SIZES[args.size]
    steps = args.warmup + args.steps
    seed_everything(0)
    sae_cls, cfg_cls = get_sae_training_class(args.architecture)
    sae = sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, device=device)).to(device)
    data = SyntheticModelData.create(
        DemoDataOptions(
            n_features=2 * d_in, d_in=d_in, seed=0, samples=batch * steps, device=device
        )
    )
    cuda = torch.device(device) if device.startswith("cuda") else None
    batches = stream_batches(
        lambda s, rows: data.training_batches(rows, 1, s),
        batch,
        args.data_streams,
        seed=0,
        cuda_device=cuda,
    )
    trainer_cfg = SAETrainerConfig(
        total_training_samples=batch * steps,
        train_batch_size_samples=batch,
        lr=4e-4,
        lr_end=4e-4,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        device=device,
        n_checkpoints=0,
        checkpoint_path=None,
        dead_feature_window=1000,
        feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches)

    class TimedLoop(TrainingLoop):
        step_times: list[float]

        def train_step(self, batch: torch.Tensor | None = None) -> None:
            super().train_step(batch)
            if cuda is not None:
                torch.cuda.synchronize(cuda)
            self.step_times.append(time.perf_counter())

    loop = TimedLoop(trainer, batches, check_every=50)
    loop.step_times = []
    return loop, batch


# --------------------------------------------------------------------------------------
# main: launch the configurations, interleaved
# --------------------------------------------------------------------------------------
def launch(args: argparse.Namespace, processes: int, threads: int, size: str) -> dict[str, Any]:
    worker_args = [
        str(Path(__file__).resolve()), "--worker", "--size", size, "--threads", str(threads),
        "--device", args.device, "--architecture", args.architecture,
        "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--data-streams", str(args.data_streams),
    ]  # fmt: skip
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        if processes > 1
        else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, *launcher, *worker_args],
        env=env, capture_output=True, text=True, check=False, cwd=REPO, timeout=LAUNCH_TIMEOUT_S,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{processes} x {threads} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def configurations(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(processes, threads per process)."""
    if args.device.startswith("cuda"):
        return [(n, 1) for n in args.gpus]
    n = args.cores
    return list(dict.fromkeys([(1, 1), (n, 1), *([(1, n)] if args.with_threads else [])]))


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    results: dict[tuple[str, int, int], list[float]] = {}
    for repeat in range(args.repeats):
        for size in args.sizes:
            for processes, threads in configurations(args):
                rate = launch(args, processes, threads, size)["samples_per_s"]
                results.setdefault((size, processes, threads), []).append(rate)
                print(f"repeat {repeat} {size} {processes}x{threads}: {rate:,.0f} samples/s",
                      file=sys.stderr, flush=True)  # fmt: skip
    print(table(args, results))


def table(args: argparse.Namespace, results: dict[tuple[str, int, int], list[float]]) -> str:
    rows = [
        f"{args.architecture}, {args.device}, {args.steps} timed steps after {args.warmup}, "
        f"{args.repeats} interleaved repeats, data streams {args.data_streams}",
        "",
        "| size (d_in, d_sae, batch) | processes x threads | samples/s (median) | range | vs 1 x 1 |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for size in args.sizes:
        base = statistics.median(results[(size, *configurations(args)[0])])
        for processes, threads in configurations(args):
            rates = results[(size, processes, threads)]
            median = statistics.median(rates)
            rows.append(
                f"| {size} {SIZES[size]} | {processes} x {threads} | {median:,.0f} | "
                f"{min(rates):,.0f}-{max(rates):,.0f} | {median / base:.2f} |"
            )
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", nargs="+", default=["small", "large"], choices=sorted(SIZES))
    parser.add_argument("--architecture", default="standard")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cores", type=int, default=2, help="CPU: N of the configurations")
    parser.add_argument(
        "--with-threads", action="store_true", help="CPU: also 1 process x N threads"
    )
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPU: process counts")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--data-streams", type=int, default=0, help="default: lcm of the process counts"
    )
    args = parser.parse_args(smoke_argv(None, SMOKE))
    if not args.data_streams and not args.worker:
        counts = [p for p, _ in configurations(args)]
        args.data_streams = math.lcm(*counts)
    return args


if __name__ == "__main__":
    main()
