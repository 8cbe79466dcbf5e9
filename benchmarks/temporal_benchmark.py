"""Benchmark: upstream `standard` vs `temporal_consistency` vs the contrastive variant,
plus a window x coefficient grid, on synthetic sequences with ground truth.

All SAEs train in one process, in lockstep on the same window-shuffled batches
(same data, same number of steps), and their step times are measured interleaved,
so ratios to `standard` are measured under the same machine load.

    .venv/bin/python benchmarks/temporal_benchmark.py            # ~5 min on 2 shared cores
    .venv/bin/python benchmarks/temporal_benchmark.py --steps 50  # smoke run

Columns: MCC (decoder vs true features, Hungarian), explained variance, L0, autocorr
error = mean over true features of |lag-1 autocorrelation of the matched latent - that of
the true feature| (held-out sequences), redundant latent pairs (correlation >= 0.9), step
time and peak step memory (torch profiler, CPU allocations of one forward+backward) as
ratios to `standard`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def peak_step_memory(cfg, batch: torch.Tensor) -> int:
    """Peak bytes allocated during one training forward + backward (CPU profiler)."""
    from sae_lens.registry import get_sae_training_class
    from sae_lens.saes.sae import TrainStepInput
    from torch.profiler import ProfilerActivity, profile

    sae = get_sae_training_class(cfg.architecture())[0](cfg)
    coefficients = {
        k: (v.value if hasattr(v, "value") else v) for k, v in sae.get_coefficients().items()
    }
    step_input = TrainStepInput(
        sae_in=batch,
        coefficients=coefficients,
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        sae.training_forward_pass(step_input).loss.backward()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


@torch.no_grad()
def oracle_autocorr_error(data, thresholds=(0.0, 0.1, 0.2, 0.3, 0.4)) -> tuple[float, float]:
    """Best autocorr error of an oracle per-token encoder that knows the true directions:
    ``relu(x @ feature_vectors.T - threshold)``, over a few thresholds. No per-token SAE can
    be expected to beat it by much: its error is what per-token noise and interference
    leave, which a training loss cannot remove at inference."""
    from sae_lens_ext_plugins.temporal_consistency.metrics import autocorrelation

    true = autocorrelation(data.feature_acts, 1)[:, 0]
    proj = data.activations @ data.feature_vectors.T
    errors = {
        th: float((autocorrelation((proj - th).relu(), 1)[:, 0] - true).abs().mean())
        for th in thresholds
    }
    best = min(errors, key=errors.get)
    return errors[best], best


def timing_at_size(d_in: int, d_sae: int, batch_size: int, steps: int, seed: int) -> dict:
    """Step-time ratios to `standard` at a size where the SAE's matrix products dominate
    (random activations; only timing is meaningful)."""
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
    from sae_lens_ext_plugins.temporal_consistency.sae import (
        TemporalConsistencyTrainingSAEConfig as TC,
    )
    from sae_lens_ext_plugins.temporal_consistency.train import train_together

    acts = torch.randn(
        2 * batch_size // 64, 64, d_in, generator=torch.Generator().manual_seed(seed)
    )
    cfgs = {
        "standard": StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=1e-3),
        "temporal_consistency": TC(d_in=d_in, d_sae=d_sae, l1_coefficient=1e-3),
        "temporal (normalized form)": TC(
            d_in=d_in, d_sae=d_sae, l1_coefficient=1e-3, temporal_loss_form="normalized"
        ),
        "contrastive": TC(
            d_in=d_in,
            d_sae=d_sae,
            l1_coefficient=1e-3,
            temporal_coefficient=0.0,
            temporal_contrastive_coefficient=0.1,
        ),
    }
    results = train_together(cfgs, acts, training_steps=steps, batch_size=batch_size, lr=1e-4)
    base = results["standard"].median_step_seconds
    return {
        n: (1e3 * r.median_step_seconds, r.median_step_seconds / base) for n, r in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--l1", type=float, default=0.3)
    parser.add_argument("--d-sae", type=int, default=256)
    parser.add_argument("--windows", default="2,8")
    parser.add_argument("--coefficients", default="0.03,0.3")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: steadier timings on a shared machine)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timing-size",
        default="512,4096",
        help="d_in,d_sae of the extra step-time measurement ('' to skip)",
    )
    parser.add_argument("--timing-steps", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/out", help="folder for JSON and plots")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import sae_lens  # noqa: F401  (registers plugin architectures)
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
    from sae_lens_ext_plugins.temporal_consistency.data import (
        SyntheticSequenceConfig,
        SyntheticSequences,
    )
    from sae_lens_ext_plugins.temporal_consistency.metrics import evaluate_on_sequences
    from sae_lens_ext_plugins.temporal_consistency.plots import (
        plot_metrics_comparison,
        plot_training_curves,
    )
    from sae_lens_ext_plugins.temporal_consistency.sae import (
        TemporalConsistencyTrainingSAEConfig as TC,
    )
    from sae_lens_ext_plugins.temporal_consistency.train import train_together

    start = time.time()
    data_cfg = SyntheticSequenceConfig(
        num_features=128, d_in=64, seq_len=64, n_sequences=512, noise_std=0.05, seed=args.seed
    )
    train = SyntheticSequences(data_cfg)
    held_out = SyntheticSequences(
        SyntheticSequenceConfig(**{**data_cfg.__dict__, "seed": args.seed + 1, "n_sequences": 128}),
        feature_dict=train.feature_dict,
    )
    d_in, d_sae, l1 = data_cfg.d_in, args.d_sae, args.l1
    cfgs = {
        "standard": StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=l1),
        "temporal_consistency": TC(d_in=d_in, d_sae=d_sae, l1_coefficient=l1),
        "temporal (normalized form)": TC(
            d_in=d_in, d_sae=d_sae, l1_coefficient=l1, temporal_loss_form="normalized"
        ),
        "contrastive": TC(
            d_in=d_in,
            d_sae=d_sae,
            l1_coefficient=l1,
            temporal_coefficient=0.0,
            temporal_contrastive_coefficient=0.1,
        ),
    }
    for w in [int(v) for v in args.windows.split(",") if v]:
        for c in [float(v) for v in args.coefficients.split(",") if v]:
            cfgs[f"grid w={w} c={c:g}"] = TC(
                d_in=d_in,
                d_sae=d_sae,
                l1_coefficient=l1,
                temporal_window=w,
                temporal_coefficient=c,
            )
    results = train_together(
        cfgs,
        train,
        training_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    batch = next(train.batches(8, args.batch_size, seed=args.seed))
    base_time = results["standard"].median_step_seconds
    base_mem = peak_step_memory(cfgs["standard"], batch)
    rows = []
    for name, result in results.items():
        metrics = evaluate_on_sequences(result.sae, held_out)
        rows.append(
            {
                "name": name,
                "window": getattr(cfgs[name], "temporal_window", None),
                "coefficient": getattr(cfgs[name], "temporal_coefficient", None),
                **metrics,
                "step_ms": 1e3 * result.median_step_seconds,
                "step_time_ratio": result.median_step_seconds / base_time,
                "peak_memory_ratio": peak_step_memory(cfgs[name], batch) / base_mem,
            }
        )
    base = rows[0]
    print(
        "| run | MCC | expl. var. | L0 | autocorr error | redundant pairs | step time | peak mem |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['mcc']:.3f} | {r['explained_variance']:.3f} | {r['l0']:.1f} | "
            f"{r['autocorr_error']:.4f} | {r['redundant_pairs']} | {r['step_time_ratio']:.2f}x | "
            f"{r['peak_memory_ratio']:.2f}x |"
        )
    oracle_error, oracle_threshold = oracle_autocorr_error(held_out)
    print(
        f"| oracle per-token encoder (true directions, threshold {oracle_threshold:g}) | - | - | - "
        f"| {oracle_error:.4f} | - | - | - |"
    )
    tc = rows[1]
    reduction = 1 - tc["autocorr_error"] / base["autocorr_error"]
    print(
        f"\nstandard step: {base['step_ms']:.1f} ms; true mean lag-1 autocorrelation "
        f"{base['true_mean_autocorrelation']:.3f}; {args.steps} steps x {args.batch_size} rows"
    )
    print("targets for temporal_consistency (defaults):")
    print(
        f"  autocorr error reduction {100 * reduction:.1f}% (target >= 30%): "
        f"{'met' if reduction >= 0.30 else 'NOT met'}"
    )
    print(
        f"  MCC {tc['mcc']:.3f} vs standard - 0.02 = {base['mcc'] - 0.02:.3f}: "
        f"{'met' if tc['mcc'] >= base['mcc'] - 0.02 else 'NOT met'}"
    )
    print(
        f"  explained variance {tc['explained_variance']:.3f} vs standard - 0.03 = "
        f"{base['explained_variance'] - 0.03:.3f}: "
        f"{'met' if tc['explained_variance'] >= base['explained_variance'] - 0.03 else 'NOT met'}"
    )
    print(
        f"  step time {tc['step_time_ratio']:.2f}x (target <= 1.10x): "
        f"{'met' if tc['step_time_ratio'] <= 1.10 else 'NOT met'}"
    )
    print(
        f"  (best possible for a per-token encoder, the oracle: "
        f"{100 * (1 - oracle_error / base['autocorr_error']):.1f}% lower than standard)"
    )
    timing = {}
    if args.timing_size:
        d_in_t, d_sae_t = (int(v) for v in args.timing_size.split(","))
        timing = timing_at_size(d_in_t, d_sae_t, args.batch_size, args.timing_steps, args.seed)
        print(
            f"\nstep time at d_in={d_in_t}, d_sae={d_sae_t}, batch {args.batch_size} "
            f"(median of {args.timing_steps - 5} interleaved steps):"
        )
        for name, (ms, ratio) in timing.items():
            print(f"  {name}: {ms:.0f} ms = {ratio:.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "temporal_benchmark.json").write_text(
        json.dumps(
            {"rows": rows, "oracle_autocorr_error": oracle_error, "timing_at_size": timing},
            indent=2,
        )
    )
    plot_metrics_comparison(rows, out / "metrics_comparison.png")
    plot_training_curves({n: r.history for n, r in results.items()}, out / "training_curves.png")
    print(
        f"wrote {out}/temporal_benchmark.json, metrics_comparison.png, training_curves.png "
        f"({time.time() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
