"""Ground-truth benchmark of the frequency-ordered SAE on SAE-Lens's synthetic data.

Every row trains on the same synthetic stream (same seeds, same number of
samples, same lr, same batch size) through SAE-Lens's ``SAETrainer.step``:

- upstream ``standard`` (also at the L0 of the prefix mode) and ``matryoshka_batchtopk``;
- ``freq_ordered`` at its defaults (the prefix mode), told the run's length as
  ``sae-lens train`` tells it and not told it (SAE-Lens's own runners: the fallback
  warm-up), then one change at a time;
- ``freq_ordered`` without the prefix term (the ``no-prefix`` preset, the defaults before
  the prefix mode; and with the sort alone);
- every registered preset of ``freq_ordered``: the research log's runs 2 to 9, cumulative.

Columns: ground-truth MCC, explained variance, L0 and dead latents (upstream's
``eval_sae_on_synthetic_data``), Spearman(latent index, measured frequency),
prefix explained variance with the first 10/25/50 % of latents (as trained and
after the exact post-hoc reordering by measured frequency), seed-to-seed
consistency (rows marked for it are trained a second time with another seed for the
SAE's initialisation, same data; decoder rows matched one to one by the Hungarian
algorithm on cosine: mean matched cosine / share above 0.9), training step time and
peak memory as ratios to ``standard``.

Step time: after training, every row's SAE gets a fresh optimizer and the rows
take timed steps round-robin on the same batches (the order reverses every round);
a step's time is the CPU time of this process (``time.process_time``: with one
torch thread, time spent waiting for other processes' jobs does not count); the
ratio to ``standard`` is the median over rounds of the per-round ratio. Peak memory: on CUDA,
``torch.cuda.max_memory_allocated`` over one step; on CPU (no allocator peak
counter) the bytes of parameters, gradients, Adam state and every tensor saved
for backward in one step (distinct storages, via ``saved_tensors_hooks``).

Run (about 11 minutes on 2 shared CPU cores; ``--lm-timing`` adds a few steps at
``d_in 768, d_sae 16384``, batch 4096, about 6 more minutes; ``--no-consistency``
skips the second seeds)::

    .venv/bin/python benchmarks/freq_ordered_benchmark.py --out tables.md --json results.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
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
    decoder_consistency,
    measure_frequencies,
    ordering_spearman,
    prefix_explained_variance,
)
from sae_lens_ext_plugins.freq_ordered.reorder import reorder_by_frequency
from smoke import is_smoke, smoke_argv

from sae_lens_ext.training.sae import FALLBACK_TRAINING_STEPS, make_trainer

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
    consistency: bool = False  # also train with seed + 1 and compare the dictionaries
    told_length: bool = True  # False: the SAE is not told the run's length (upstream's runners)


DEFAULTS = "freq_ordered (defaults)"
NO_PREFIX = "preset no-prefix (the defaults before the prefix mode)"


def prefix_rows(setup: Setup) -> list[Row]:
    """``freq_ordered`` at its defaults (the prefix mode: ``prefix_coefficient`` 1 ramped over
    the whole run, ``l1_coefficient`` 0.6x ``standard``'s), then one change at a time."""

    def row(name: str, consistency: bool = False, told_length: bool = True, **changes: Any) -> Row:
        settings = {"l1_coefficient": 0.6 * setup.l1, **changes}
        return Row(name, "freq_ordered", settings, consistency, told_length)

    return [
        row(DEFAULTS, True),
        row(
            f"defaults, run's length unknown (ramp over {FALLBACK_TRAINING_STEPS} steps)",
            told_length=False,
        ),
        row("prefix: l1 x1 (L0 of standard)", True, l1_coefficient=setup.l1),
        row("prefix: coefficient 2, l1 x1", True, prefix_coefficient=2.0, l1_coefficient=setup.l1),
        row("prefix: coefficient 2", prefix_coefficient=2.0),
        row("prefix: coefficient 0.5", prefix_coefficient=0.5),
        row("prefix: no warm-up", True, prefix_warm_up_steps=0),
        row("prefix: ramp over the first quarter", prefix_warm_up_fraction=0.25),
        row("prefix: ordering warm-up over the first quarter", ordering_warm_up_fraction=0.25),
        row(
            "prefix: no sort, no ordering loss",
            True,
            sort_latents_every=0,
            ordering_coefficient=0.0,
        ),
        row("prefix: exponent 1 (log-uniform)", prefix_exponent=1.0),
        row("prefix: exponent 0 (uniform)", prefix_exponent=0.0),
    ]


def preset_rows(setup: Setup) -> list[Row]:
    """Every preset of ``freq_ordered`` (the research log's runs 2 to 9, cumulative), as
    registered; resampling every quarter of this short run instead of every 1000 steps."""
    from sae_lens_ext.plugins import presets_of

    rows = []
    for name, preset in presets_of("freq_ordered").items():
        if name == "no-prefix" or name == "log-run-6":  # no-prefix: above; 6: the settings of 5
            continue
        settings = dict(preset.settings)
        if settings.get("resample_dead_every"):
            settings["resample_dead_every"] = max(1, setup.samples // setup.batch_size // 4)
        if settings.get("l1_coefficient") == 1.0:
            settings["l1_coefficient"] = setup.l1
        rows.append(Row(f"preset {name}", "freq_ordered", settings))
    return rows


def rows(setup: Setup) -> list[Row]:
    widths = [setup.d_sae // 8, setup.d_sae // 4, setup.d_sae // 2, setup.d_sae]
    no_prefix = {"l1_coefficient": setup.l1, "prefix_coefficient": 0.0}
    return [
        Row("standard", "standard", {"l1_coefficient": setup.l1}, consistency=True),
        Row(
            "standard, l1 x0.4 (L0 of the prefix mode)",
            "standard",
            {"l1_coefficient": 0.4 * setup.l1},
            consistency=True,
        ),
        Row(
            "matryoshka_batchtopk",
            "matryoshka_batchtopk",
            {"k": 9, "matryoshka_widths": widths},
            consistency=True,
        ),
        *prefix_rows(setup),
        Row(NO_PREFIX, "freq_ordered", no_prefix, consistency=True),
        Row(
            "no prefix, sort only (no ordering loss)",
            "freq_ordered",
            {**no_prefix, "ordering_coefficient": 0.0},
            consistency=True,
        ),
        *preset_rows(setup),
    ]


def make_sae(row: Row, setup: Setup) -> Any:
    sae_class, cfg_class = get_sae_training_class(row.architecture)
    return sae_class(cfg_class(d_in=setup.d_in, d_sae=setup.d_sae, **row.kwargs))


def trainer_for(
    sae: Any, setup: Setup, data: Callable[[int], torch.Tensor], told_length: bool = True
) -> SAETrainer:
    cfg = SAETrainerConfig(  # upstream's defaults otherwise: constant lr, no checkpoints
        total_training_samples=setup.samples,
        train_batch_size_samples=setup.batch_size,
        lr=setup.lr,
        lr_end=setup.lr,
        dead_feature_window=200,
        feature_sampling_window=1000,
        logger=LoggingConfig(log_to_wandb=False),
    )
    if not told_length:  # as SAE-Lens's own runners build it: the SAE's fallback warm-up
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    return make_trainer(cfg, sae, iter(()))  # tells the SAE the run's length


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


def train(row: Row, setup: Setup, stream: SeededStream, seed: int | None = None) -> Any:
    """Train ``row``'s SAE on the whole stream; ``seed`` (default ``setup.seed``) seeds the
    SAE's initialisation."""
    torch.manual_seed(setup.seed if seed is None else seed)
    sae = make_sae(row, setup)
    trainer = trainer_for(sae, setup, stream, row.told_length)
    for i in range(setup.samples // setup.batch_size):
        trainer.maybe_reset_sparsity()
        trainer.step(stream(i))
        trainer.n_training_steps += 1
    return sae


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


@dataclass
class Timing:
    seconds: float  # median step time
    ratio: float  # median over rounds of (this row's step time / standard's)
    bytes: int


def time_steps(
    saes: dict[str, Any], setup: Setup, stream: Callable[[int], torch.Tensor], warm_up: int = 3
) -> dict[str, Timing]:
    """Step CPU times round-robin over rows (order reversed every round) on copies of the
    SAEs with fresh optimizers, and step bytes; ratios are to the ``standard`` row."""
    trainers = {n: trainer_for(copy.deepcopy(s), setup, stream) for n, s in saes.items()}
    batches = [stream(i) for i in range(4)]
    memory = {n: step_bytes(t, batches[0]) for n, t in trainers.items()}
    times: dict[str, list[float]] = {n: [] for n in trainers}
    for i in range(setup.timing_steps + warm_up):
        order = list(trainers.items())
        for n, t in order[::-1] if i % 2 else order:
            start = time.process_time()
            t.step(batches[i % len(batches)])
            t.n_training_steps += 1
            if i >= warm_up:
                times[n].append(time.process_time() - start)
    base = times["standard"]
    return {
        n: Timing(
            statistics.median(ts),
            statistics.median(a / b for a, b in zip(ts, base, strict=True)),
            memory[n],
        )
        for n, ts in times.items()
    }


LARGE = {"d_in": 256, "d_sae": 2048, "batch_size": 1024, "timing_steps": 30}
LM_SIZE = {"d_in": 768, "d_sae": 16384, "batch_size": 4096, "timing_steps": 6}
LARGE_ROWS = (
    "standard",
    DEFAULTS,
    "prefix: no sort, no ordering loss",
    NO_PREFIX,
    "no prefix, sort only (no ordering loss)",
    "preset log-run-2",
)
LM_ROWS = ("standard", DEFAULTS, NO_PREFIX)


def time_at_size(setup: Setup, size: dict[str, int], names: tuple[str, ...]) -> dict[str, Timing]:
    """Step time and memory of fresh SAEs of another size on random inputs (what a step
    costs does not depend on what the SAE has learned: every product is dense)."""
    big = Setup(**{**setup.__dict__, **size})
    g = torch.Generator().manual_seed(0)
    data = torch.randn(4 * big.batch_size, big.d_in, generator=g)
    b = big.batch_size
    saes = {}
    for row in rows(big):
        if row.name in names:
            torch.manual_seed(0)
            saes[row.name] = make_sae(row, big)
    return time_steps(saes, big, lambda i: data[(i % 4) * b : (i % 4 + 1) * b], warm_up=1)


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


def size_table(results: dict[str, dict[str, float]], key: str, size: dict[str, int]) -> str:
    """Step time table of the rows timed at another size (``key``: ``large`` or ``lm``)."""
    lines = [
        f"| {n} | {r[f'step_s_{key}'] * 1000:.0f} ms | {r[f'time_ratio_{key}']:.2f} | "
        f"{r[f'mem_ratio_{key}']:.2f} |"
        for n, r in results.items()
        if f"time_ratio_{key}" in r
    ]
    head = f"row (d_in {size['d_in']}, d_sae {size['d_sae']}, batch {size['batch_size']})"
    return (
        f"| {head} | step time | step time / standard | peak mem / standard |\n"
        "|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )


def table(results: dict[str, dict[str, float]]) -> str:
    head = (
        "| row | MCC | EV | L0 | dead | Spearman(idx,freq) | pEV@10% | pEV@25% | pEV@50% "
        "| pEV@25% reordered | seed consistency (mean cos / >0.9) | step time / standard "
        "| peak mem / standard |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for n, r in results.items():
        cons = (
            f"{r['consistency']:.3f} / {r['consistency_share']:.2f}" if "consistency" in r else ""
        )
        lines.append(
            f"| {n} | {r['mcc']:.3f} | {r['ev']:.3f} | {r['l0']:.1f} | {r['dead']:.0f} | "
            f"{r['spearman']:.3f} | {r['pev10']:.3f} | {r['pev25']:.3f} | {r['pev50']:.3f} | "
            f"{r['pev25_reordered']:.3f} | {cons} | {r['time_ratio']:.2f} | {r['mem_ratio']:.2f} |"
        )
    return head + "\n".join(lines) + "\n"


def synthetic_data(setup: Setup) -> tuple[SyntheticModel, SeededStream, torch.Tensor]:
    """The ground-truth model, the training stream and the held-out evaluation rows."""
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
    return model, stream, eval_x


@torch.no_grad()
def oracle_prefix_ev(model: SyntheticModel, setup: Setup) -> dict[float, float]:
    """Prefix EV of the ground truth itself: the true features, most frequent first, with
    their true activations, on the evaluation rows (the best a dictionary whose latents are
    the true features can do; a prefix can only beat it with latents that mix features)."""
    with torch.random.fork_rng():
        torch.manual_seed(setup.seed + 999)  # the same rows as ``eval_x``
        acts = model.activation_generator.sample(setup.eval_samples)
    x = model.feature_dict(acts).double()
    order = torch.argsort(-(acts > 0).float().mean(0), stable=True)
    total = (x - x.mean(0)).pow(2).sum(-1).mean()
    out = {}
    for f in FRACTIONS:
        kept = torch.zeros_like(acts)
        top = order[: round(f * setup.num_features)]
        kept[:, top] = acts[:, top]
        out[f] = float(1 - (x - model.feature_dict(kept).double()).pow(2).sum(-1).mean() / total)
    return out


def train_and_evaluate(
    selected: list[Row],
    setup: Setup,
    data: tuple[SyntheticModel, SeededStream, torch.Tensor],
    consistency: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Train and evaluate every selected row (and its second seed where marked)."""
    model, stream, eval_x = data
    results: dict[str, dict[str, float]] = {}
    saes: dict[str, Any] = {}
    t0 = time.perf_counter()
    for row in selected:
        start = time.perf_counter()
        saes[row.name] = sae = train(row, setup, stream)
        results[row.name] = {
            **evaluate(sae, model, setup, eval_x),
            "train_s": time.perf_counter() - start,
        }
        if row.consistency and consistency:
            other = train(row, setup, stream, seed=setup.seed + 1)
            c = decoder_consistency(sae, other)
            results[row.name].update(consistency=c.mean_cosine, consistency_share=c.share_above)
        print(
            f"[{time.perf_counter() - t0:6.0f}s] {row.name}: "
            + json.dumps({k: round(v, 4) for k, v in results[row.name].items()}),
            flush=True,
        )
    return results, saes


def add_timings(results: dict[str, dict[str, float]], key: str, timing: dict[str, Timing]) -> None:
    for name, t in timing.items():
        base = timing["standard"].bytes
        results[name].update(
            {
                f"time_ratio{key}": t.ratio,
                f"mem_ratio{key}": t.bytes / base,
                f"step_s{key}": t.seconds,
            }
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=Setup.samples)
    parser.add_argument("--d-sae", type=int, default=Setup.d_sae)
    parser.add_argument("--l1", type=float, default=Setup.l1)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)"
    )
    parser.add_argument("--only", default="", help="comma-separated substrings of row names")
    parser.add_argument("--no-consistency", action="store_true", help="skip the second seeds")
    parser.add_argument("--lm-timing", action="store_true", help="also time d_in 768, d_sae 16k")
    parser.add_argument("--out", default="", help="write the markdown tables here")
    parser.add_argument("--json", default="", help="write raw results here")
    smaller = ["--samples", "4096", "--d-sae", "128", "--only", DEFAULTS]
    args = parser.parse_args(smoke_argv(argv, [*smaller, "--no-consistency"]))
    torch.set_num_threads(args.threads)
    sae_lens_logger.setLevel("WARNING")
    setup = Setup(samples=args.samples, d_sae=args.d_sae, l1=args.l1)
    if is_smoke():  # seconds, not minutes: the same code on tiny sizes
        setup.eval_samples, setup.timing_steps, args.lm_timing = 4096, 3, False
        LARGE.update(d_in=32, d_sae=64, batch_size=64, timing_steps=3)
    selected = [
        r
        for r in rows(setup)
        if not args.only
        or r.name == "standard"
        or any(s and s in r.name for s in args.only.split(","))
    ]
    t0 = time.perf_counter()
    data = synthetic_data(setup)
    results, saes = train_and_evaluate(selected, setup, data, not args.no_consistency)
    add_timings(results, "", time_steps(saes, setup, data[1]))
    names = tuple(n for n in LARGE_ROWS if n in results)
    add_timings(results, "_large", time_at_size(setup, LARGE, names))
    oracle = oracle_prefix_ev(data[0], setup)
    results["standard"]["oracle_pev"] = oracle  # type: ignore[assignment]
    text = (
        table(results)
        + "\nGround truth (true features, most frequent first): "
        + ", ".join(f"pEV@{int(f * 100)}% {v:.3f}" for f, v in oracle.items())
        + "\n\n"
        + size_table(results, "large", LARGE)
    )
    if args.lm_timing:
        names = tuple(n for n in LM_ROWS if n in results)
        add_timings(results, "_lm", time_at_size(setup, LM_SIZE, names))
        text += "\n" + size_table(results, "lm", LM_SIZE)
    print(text)
    print(
        f"true L0 of the data: {results['standard']['true_l0']:.2f}; "
        f"total {time.perf_counter() - t0:.0f}s"
    )
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup.__dict__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
