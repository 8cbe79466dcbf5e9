"""Ground-truth benchmark of the frequency-ordered SAE on SAE-Lens's synthetic data.

Every row trains on the same synthetic stream (same seeds, same number of
samples, same lr, same batch size) through SAE-Lens's ``SAETrainer.step``:

- upstream ``standard`` and ``matryoshka_batchtopk``;
- ``freq_ordered`` with its defaults;
- ``freq_ordered`` with each option of the research log switched on alone
  (ordering loss and all other options off otherwise).

Columns: ground-truth MCC, explained variance, L0 and dead latents (upstream's
``eval_sae_on_synthetic_data``), Spearman(latent index, measured frequency),
prefix explained variance with the first 10/25/50 % of latents (as trained and
after the exact post-hoc reordering by measured frequency), training step time and
peak memory as ratios to ``standard``.

Step time: after training, every row's SAE gets a fresh optimizer and the rows
take timed steps round-robin on the same batches (so load from other processes
hits all rows alike); the median per row is reported. Peak memory: on CUDA,
``torch.cuda.max_memory_allocated`` over one step; on CPU (no allocator peak
counter) the bytes of parameters, gradients, Adam state and every tensor saved
for backward in one step (distinct storages, via ``saved_tensors_hooks``).

Run (about 5 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/freq_ordered_benchmark.py --out docs/benchmarks-freq-ordered.md
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens import SAE
from sae_lens import logger as sae_lens_logger
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.synthetic import (
    SyntheticModel,
    SyntheticModelConfig,
    ZipfianFiringProbabilityConfig,
    eval_sae_on_synthetic_data,
)
from sae_lens.training.sae_trainer import SAETrainer
from sae_lens_ext_plugins.freq_ordered.metrics import (
    measure_frequencies,
    ordering_spearman,
    prefix_explained_variance,
)
from sae_lens_ext_plugins.freq_ordered.reorder import reorder_by_frequency

FRACTIONS = (0.1, 0.25, 0.5)


@dataclass
class Setup:
    num_features: int = 512
    d_in: int = 64
    d_sae: int = 512
    samples: int = 300_000
    batch_size: int = 512
    lr: float = 3e-3
    l1: float = 1.0
    eval_samples: int = 100_000
    timing_steps: int = 60
    seed: int = 0


@dataclass
class Row:
    name: str
    architecture: str
    kwargs: dict[str, Any] = field(default_factory=dict)


# every option of the log alone: the ordering loss and all other options off
# (the in-training sort is not a log option: off in these rows)
OFF = {"ordering_coefficient": 0.0, "ordering_warm_up_steps": 0, "sort_latents_every": 0}


def rows(setup: Setup) -> list[Row]:
    steps = setup.samples // setup.batch_size
    return [
        Row("standard", "standard", {"l1_coefficient": setup.l1}),
        Row(
            "matryoshka_batchtopk",
            "matryoshka_batchtopk",
            {
                "k": 9,
                "matryoshka_widths": [
                    setup.d_sae // 8,
                    setup.d_sae // 4,
                    setup.d_sae // 2,
                    setup.d_sae,
                ],
            },
        ),
        Row("freq_ordered (defaults)", "freq_ordered", {"l1_coefficient": setup.l1}),
        Row(
            "sort only, no ordering loss",
            "freq_ordered",
            {**OFF, "l1_coefficient": setup.l1, "sort_latents_every": 25},
        ),
        Row(
            "+ ordering 0.3 (run 2)",
            "freq_ordered",
            {**OFF, "l1_coefficient": setup.l1, "ordering_coefficient": 0.3},
        ),
        Row(
            "+ ordering 0 -> 0.5 warm-up (run 3)",
            "freq_ordered",
            {
                **OFF,
                "l1_coefficient": setup.l1,
                "ordering_coefficient": 0.5,
                "ordering_warm_up_steps": min(1000, steps // 2),
            },
        ),
        Row(
            "+ resampling (run 4)",
            "freq_ordered",
            {**OFF, "l1_coefficient": setup.l1, "resample_dead_every": max(1, steps // 4)},
        ),
        Row(
            "+ adaptive L1 (run 5)",
            "freq_ordered",
            {**OFF, "l1_coefficient": setup.l1, "adaptive_l1": True},
        ),
        Row(
            "+ LayerNorm (run 7)",
            "freq_ordered",
            {**OFF, "l1_coefficient": setup.l1, "layer_norm": True},
        ),
        Row(
            "+ skip 0.1 (run 8)",
            "freq_ordered",
            {**OFF, "l1_coefficient": setup.l1, "skip_projection": True},
        ),
        Row(
            "+ attention, window 8 (run 9)",
            "freq_ordered",
            {**OFF, "l1_coefficient": setup.l1, "attention": True, "attention_window": 8},
        ),
    ]


def make_sae(row: Row, setup: Setup) -> Any:
    sae_class, cfg_class = get_sae_training_class(row.architecture)
    return sae_class(cfg_class(d_in=setup.d_in, d_sae=setup.d_sae, **row.kwargs))


def trainer_for(sae: Any, setup: Setup, data: Callable[[int], torch.Tensor]) -> SAETrainer:
    cfg = SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=setup.samples,
        device="cpu",
        autocast=False,
        lr=setup.lr,
        lr_end=setup.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        lr_decay_steps=0,
        n_restart_cycles=1,
        train_batch_size_samples=setup.batch_size,
        dead_feature_window=200,
        feature_sampling_window=1000,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=10,
    )
    return SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))


class SeededStream:
    """The synthetic training set, generated once: batch ``i`` is the same for every row."""

    def __init__(self, model: SyntheticModel, setup: Setup):
        self.batch_size = setup.batch_size
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(setup.seed)
            chunks = [
                model.feature_dict(model.activation_generator.sample(16_384))
                for _ in range(-(-setup.samples // 16_384))
            ]
        self.data = torch.cat(chunks)[: setup.samples].contiguous()

    def __call__(self, i: int) -> torch.Tensor:
        start = (i * self.batch_size) % (self.data.shape[0] - self.batch_size + 1)
        return self.data[start : start + self.batch_size]


def train(row: Row, setup: Setup, stream: SeededStream) -> tuple[Any, float]:
    torch.manual_seed(setup.seed)
    sae = make_sae(row, setup)
    trainer = trainer_for(sae, setup, stream)
    start = time.perf_counter()
    for i in range(setup.samples // setup.batch_size):
        trainer.maybe_reset_sparsity()
        trainer.step(stream(i))
        trainer.n_training_steps += 1
    return sae, time.perf_counter() - start


def step_bytes(trainer: SAETrainer, batch: torch.Tensor) -> int:
    """Parameters + grads + Adam state + distinct storages saved for backward in one step."""
    if torch.cuda.is_available() and batch.is_cuda:
        torch.cuda.reset_peak_memory_stats()
        trainer.step(batch)
        return torch.cuda.max_memory_allocated()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.step(batch)
    params = sum(p.numel() * p.element_size() for p in trainer.sae.parameters())
    return 4 * params + sum(saved.values())  # params, grads, exp_avg, exp_avg_sq


def time_steps(
    saes: dict[str, Any], setup: Setup, stream: SeededStream
) -> dict[str, tuple[float, int]]:
    """Median step seconds (round-robin over rows) and step bytes, on copies of the SAEs."""
    trainers = {n: trainer_for(copy.deepcopy(s), setup, stream) for n, s in saes.items()}
    batches = [stream(i) for i in range(4)]
    memory = {n: step_bytes(t, batches[0]) for n, t in trainers.items()}
    times: dict[str, list[float]] = {n: [] for n in trainers}
    for i in range(setup.timing_steps + 3):
        for n, t in trainers.items():
            start = time.perf_counter()
            t.step(batches[i % len(batches)])
            if i >= 3:
                times[n].append(time.perf_counter() - start)
    return {n: (statistics.median(times[n]), memory[n]) for n in trainers}


LARGE = {"d_in": 256, "d_sae": 2048, "batch_size": 1024}
LARGE_ROWS = (
    "standard",
    "freq_ordered (defaults)",
    "sort only, no ordering loss",
    "+ ordering 0.3 (run 2)",
)


def time_large(setup: Setup) -> dict[str, tuple[float, int]]:
    """Step time and memory of fresh SAEs at a larger size (d_in 256, d_sae 2048, batch
    1024), where fixed per-step overheads matter less than at the benchmark's own size."""
    large = Setup(**{**setup.__dict__, **LARGE, "timing_steps": 15})
    g = torch.Generator().manual_seed(0)
    data = torch.randn(4 * large.batch_size, large.d_in, generator=g)
    stream = lambda i: data[(i % 4) * large.batch_size : (i % 4 + 1) * large.batch_size]  # noqa: E731
    saes = {}
    for row in rows(large):
        if row.name in LARGE_ROWS:
            torch.manual_seed(0)
            saes[row.name] = make_sae(row, large)
    return time_steps(saes, large, stream)


def evaluate(
    sae: Any, model: SyntheticModel, setup: Setup, eval_x: torch.Tensor
) -> dict[str, float]:
    with torch.random.fork_rng():
        torch.manual_seed(setup.seed + 12345)
        res = eval_sae_on_synthetic_data(
            sae,
            model.feature_dict,
            model.activation_generator,
            num_samples=setup.eval_samples,
            batch_size=4096,
        )
    sae.eval()
    freqs = measure_frequencies(sae, eval_x)
    prefix = prefix_explained_variance(sae, eval_x, FRACTIONS)
    with tempfile.TemporaryDirectory() as tmp:  # the saved inference SAE (matryoshka -> jumprelu)
        sae.save_inference_model(tmp)
        reordered = SAE.load_from_disk(tmp)
    reorder_by_frequency(reordered, freqs)
    prefix_re = prefix_explained_variance(reordered, eval_x, (0.25,))
    return {
        "mcc": res.mcc,
        "ev": res.explained_variance,
        "l0": res.sae_l0,
        "true_l0": res.true_l0,
        "dead": res.dead_latents,
        "spearman": ordering_spearman(freqs),
        **{f"pev{int(f * 100)}": v for f, v in prefix.items()},
        "pev25_reordered": prefix_re[0.25],
    }


def large_table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        f"| {n} | {r['step_s_large'] * 1000:.0f} ms | {r['time_ratio_large']:.2f} | "
        f"{r['mem_ratio_large']:.2f} |"
        for n, r in results.items()
        if "time_ratio_large" in r
    ]
    return (
        "| row (d_in 256, d_sae 2048, batch 1024) | step time | step time / standard "
        "| peak mem / standard |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )


def table(results: dict[str, dict[str, float]]) -> str:
    head = (
        "| row | MCC | EV | L0 | dead | Spearman(idx,freq) | pEV@10% | pEV@25% | pEV@50% "
        "| pEV@25% reordered | step time / standard | peak mem / standard |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {n} | {r['mcc']:.3f} | {r['ev']:.3f} | {r['l0']:.1f} | {r['dead']:.0f} | "
        f"{r['spearman']:.3f} | {r['pev10']:.3f} | {r['pev25']:.3f} | {r['pev50']:.3f} | "
        f"{r['pev25_reordered']:.3f} | {r['time_ratio']:.2f} | {r['mem_ratio']:.2f} |"
        for n, r in results.items()
    ]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=Setup.samples)
    parser.add_argument("--d-sae", type=int, default=Setup.d_sae)
    parser.add_argument("--l1", type=float, default=Setup.l1)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)"
    )
    parser.add_argument("--only", default="", help="comma-separated substrings of row names")
    parser.add_argument("--out", default="", help="write the markdown table here")
    parser.add_argument("--json", default="", help="write raw results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sae_lens_logger.setLevel("WARNING")
    setup = Setup(samples=args.samples, d_sae=args.d_sae, l1=args.l1)

    model = SyntheticModel(
        SyntheticModelConfig(
            num_features=setup.num_features,
            hidden_dim=setup.d_in,
            firing_probability=ZipfianFiringProbabilityConfig(
                exponent=1.0, max_prob=0.3, min_prob=0.005
            ),
            seed=setup.seed,
        )
    )
    stream = SeededStream(model, setup)
    with torch.random.fork_rng():
        torch.manual_seed(setup.seed + 999)
        eval_x = model.feature_dict(model.activation_generator.sample(setup.eval_samples)).detach()

    selected = [
        r
        for r in rows(setup)
        if not args.only
        or r.name == "standard"
        or any(s and s in r.name for s in args.only.split(","))
    ]
    results: dict[str, dict[str, float]] = {}
    saes: dict[str, Any] = {}
    t0 = time.perf_counter()
    for row in selected:
        sae, seconds = train(row, setup, stream)
        saes[row.name] = sae
        results[row.name] = {**evaluate(sae, model, setup, eval_x), "train_s": seconds}
        print(
            f"[{time.perf_counter() - t0:6.0f}s] {row.name}: "
            + json.dumps({k: round(v, 4) for k, v in results[row.name].items()}),
            flush=True,
        )
    timing = time_steps(saes, setup, stream)
    base_t, base_m = timing["standard"]
    for name, (t, m) in timing.items():
        results[name].update(step_s=t, step_bytes=m, time_ratio=t / base_t, mem_ratio=m / base_m)
    large = time_large(setup)
    base_t, base_m = large["standard"]
    for name, (t, m) in large.items():
        results[name].update(
            time_ratio_large=t / base_t, mem_ratio_large=m / base_m, step_s_large=t
        )
    text = table(results) + "\n" + large_table(results)
    print(text)
    print(
        f"true L0 of the data: {results['standard']['true_l0']:.2f}; total {time.perf_counter() - t0:.0f}s"
    )
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup.__dict__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
