"""Benchmark: temporal SAEs against per-token baselines on synthetic sequences with ground truth.

Two regimes of :class:`SyntheticSequences` (``--regimes easy,hard``):

- ``easy``: 128 persistent features in ``d_in = 64`` (2x superposition), about 7 on per
  position; upstream ``standard`` already recovers them.
- ``hard``: 256 features in ``d_in = 64`` (4x superposition), about 25 on per position, half
  persistent (persistence 0.8-0.98), half transient (independent at every position).

Per regime every SAE trains in one process, in lockstep on the same window-shuffled batches
(same data, same number of steps): upstream ``standard``, ``temporal_consistency`` (defaults),
the ``temporal_contrastive`` window-InfoNCE variant, ``tsae`` (Bhalla et al.), upstream
``matryoshka_batchtopk``, the tuned variants in ``TUNED`` and any ``--extra`` variants.
Metrics on held-out sequences with the same features (``features_from``): MCC on persistent
and transient features, explained variance, L0, lag-1 autocorrelation error of matched
latents, redundant pairs (corr >= 0.9), and the same for oracle per-token encoders that know
the true directions (``oracle_rows``).

    .venv/bin/python benchmarks/temporal_benchmark.py                    # ~15 min, 2 cores
    .venv/bin/python benchmarks/temporal_benchmark.py --steps 50 --regimes hard  # smoke run
    .venv/bin/python benchmarks/temporal_benchmark.py --regimes hard --runs standard \\
        --no-tuned --extra "tsae-c3=tsae:temporal_coefficient=3.0"  # one more variant
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from smoke import smoke_argv

REGIMES: dict[str, dict[str, Any]] = {
    "easy": {
        "data": {"num_features": 128, "d_in": 64, "noise_std": 0.05},
        "d_sae": 256,
        "l1": 0.3,
        "k": 8,
    },
    "hard": {
        "data": {
            "num_features": 256,
            "d_in": 64,
            "firing_probability": (0.05, 0.15),
            "persistence": (0.8, 0.98),
            "transient_fraction": 0.5,
            "noise_std": 0.05,
        },
        "d_sae": 512,
        "l1": 1.0,
        "k": 25,
    },
}
# the best settings found for the temporal methods on the hard regime (docs: what we tried);
# the contrastive one is temporal_consistency's preset "contrastive"
TUNED: dict[str, tuple[str, dict[str, Any]]] = {
    "preset contrastive (c=1, all latents)": (
        "temporal_contrastive",
        {"temporal_contrastive_coefficient": 1.0, "temporal_contrastive_fraction": 1.0},
    ),
    "tsae tuned (c=1, high-level half)": (
        "tsae",
        {"temporal_coefficient": 1.0, "high_level_fraction": 0.5},
    ),
}
BASELINE = "standard"
TEMPORAL = ("temporal_consistency", "temporal_contrastive", "tsae")


def make_config(arch: str, d_in: int, regime: dict[str, Any], **overrides: Any) -> Any:
    """A training config of one of the compared architectures with the regime's settings."""
    from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
    from sae_lens_ext_plugins.temporal_consistency.sae import TemporalConsistencyTrainingSAEConfig
    from sae_lens_ext_plugins.tsae.sae import TSAETrainingSAEConfig

    d_sae, l1, k = regime["d_sae"], regime["l1"], regime["k"]
    widths = [int(0.2 * d_sae), d_sae]
    base: dict[str, tuple[type, dict[str, Any]]] = {
        "standard": (StandardTrainingSAEConfig, {"l1_coefficient": l1}),
        "temporal_consistency": (TemporalConsistencyTrainingSAEConfig, {"l1_coefficient": l1}),
        "temporal_contrastive": (
            TemporalConsistencyTrainingSAEConfig,
            {
                "l1_coefficient": l1,
                "temporal_coefficient": 0.0,
                "temporal_contrastive_coefficient": 0.1,
            },
        ),
        "tsae": (TSAETrainingSAEConfig, {"k": k}),
        "matryoshka_batchtopk": (
            MatryoshkaBatchTopKTrainingSAEConfig,
            {"k": k, "matryoshka_widths": widths},
        ),
    }
    cls, kwargs = base[arch]
    return cls(d_in=d_in, d_sae=d_sae, **{**kwargs, **overrides})


def parse_extra(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"name=arch:key=value,key=value"`` -> (name, arch, overrides)."""
    name, _, rest = spec.partition("=")
    arch, _, options = rest.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "[{" else _number(value)
    return name, arch, overrides


def _number(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def regime_data(name: str, n_sequences: int, seq_len: int, seed: int) -> tuple[Any, Any]:
    """Training sequences and held-out sequences with the same features."""
    from sae_lens_ext_plugins.temporal_consistency.data import (
        SyntheticSequenceConfig,
        SyntheticSequences,
    )

    cfg = SyntheticSequenceConfig(
        **REGIMES[name]["data"], seq_len=seq_len, n_sequences=n_sequences, seed=seed
    )
    train = SyntheticSequences(cfg)
    held_out_cfg = SyntheticSequenceConfig(
        **{**cfg.__dict__, "seed": seed + 1, "n_sequences": max(32, n_sequences // 4)}
    )
    return train, SyntheticSequences(held_out_cfg, features_from=train)


@torch.no_grad()
def nonnegative_lasso(x: torch.Tensor, dictionary: torch.Tensor, lam: float, steps: int = 100):
    """``argmin_{a >= 0} 0.5 ||x - a D||^2 + lam * sum(a)`` per row (FISTA)."""
    gram = dictionary @ dictionary.T
    step = 1.0 / torch.linalg.eigvalsh(gram).max()
    xd = x @ dictionary.T
    a = torch.zeros(x.shape[0], dictionary.shape[0])
    y, t = a.clone(), 1.0
    for _ in range(steps):
        a_next = (y - step * (y @ gram - xd + lam)).clamp_min(0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = a_next + (t - 1) / t_next * (a_next - a)
        a, t = a_next, t_next
    return a


def _code_metrics(codes: torch.Tensor, data: Any) -> dict[str, float]:
    from sae_lens_ext_plugins.temporal_consistency.metrics import autocorrelation

    true = autocorrelation(data.feature_acts, 1)[:, 0]
    error = (autocorrelation(codes, 1)[:, 0] - true).abs()
    recon = codes.reshape(-1, codes.shape[-1]) @ data.feature_vectors
    x = data.activations.reshape(-1, data.activations.shape[-1])
    ev = 1 - (recon - x).pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()
    persistent = data.is_persistent
    out = {"autocorr_error": float(error.mean()), "explained_variance": float(ev)}
    if (~persistent).any():
        out["autocorr_error_persistent"] = float(error[persistent].mean())
        out["autocorr_error_transient"] = float(error[~persistent].mean())
    return out


def supervised_encoder(train: Any, steps: int = 400, lr: float = 1e-2) -> Any:
    """``relu(x W + b)`` fitted to the true feature activations of ``train`` (MSE, Adam,
    full batch, ``W`` started at the true directions): the best SAE-style encoder the
    ground truth allows."""
    x = train.activations.reshape(-1, train.activations.shape[-1])
    target = train.feature_acts.reshape(-1, train.feature_acts.shape[-1])
    weight = train.feature_vectors.T.clone().requires_grad_()
    bias = torch.zeros(target.shape[-1], requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        (x @ weight + bias).relu().sub(target).pow(2).sum(-1).mean().backward()
        optimizer.step()
    return lambda v: (v @ weight + bias).relu().detach()


def oracle_rows(data: Any, train: Any) -> list[dict[str, Any]]:
    """Per-token encoders that know the true directions ``V`` (unit rows):

    - linear: ``relu(x V^T - theta)``, theta in {0, 0.1, ..., 0.5};
    - sparse coding: non-negative lasso with the true dictionary (FISTA, 100 steps),
      lambda in {0.01, 0.03, 0.1};
    - supervised SAE encoder: ``relu(x W + b)`` trained on ``train`` to output the true
      feature activations (:func:`supervised_encoder`).

    The first two keep the parameter with the lowest autocorrelation error on the held-out
    data itself (optimistic). The target uses the lowest error of the three."""
    x = data.activations.reshape(-1, data.activations.shape[-1])
    shape = (*data.activations.shape[:2], -1)
    proj = x @ data.feature_vectors.T
    linear = {
        th: _code_metrics((proj - th).relu().reshape(shape), data)
        for th in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    }
    lasso = {
        lam: _code_metrics(nonnegative_lasso(x, data.feature_vectors, lam).reshape(shape), data)
        for lam in (0.01, 0.03, 0.1)
    }
    rows = []
    for name, results, param in (
        ("oracle linear", linear, "threshold"),
        ("oracle sparse coding", lasso, "lambda"),
    ):
        best = min(results, key=lambda key: results[key]["autocorr_error"])
        rows.append({"name": f"{name} ({param} {best:g})", **results[best]})
    codes = supervised_encoder(train)(x).reshape(shape)
    rows.append({"name": "oracle SAE encoder (supervised)", **_code_metrics(codes, data)})
    return rows


def run_regime(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate every SAE of one regime; returns rows and the oracle rows."""
    from sae_lens_ext_plugins.temporal_consistency.metrics import evaluate_on_sequences
    from temporal_training import train_together  # benchmarks/, this script's folder

    regime = dict(REGIMES[name])
    for key in ("d_sae", "l1", "k"):
        if getattr(args, key):
            regime[key] = getattr(args, key)
    train, held_out = regime_data(name, args.n_sequences, args.seq_len, args.seed)
    d_in = train.cfg.d_in
    arches = {arch: arch for arch in filter(None, args.runs.split(","))}
    cfgs = {arch: make_config(arch, d_in, regime) for arch in arches}
    extras = [(n, a, o) for n, (a, o) in TUNED.items()] if args.tuned else []
    for extra_name, arch, overrides in extras + [parse_extra(spec) for spec in args.extra]:
        arches[extra_name] = arch
        cfgs[extra_name] = make_config(arch, d_in, regime, **overrides)
    start = time.time()
    results = train_together(
        cfgs,
        train,
        training_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    train_seconds = time.time() - start
    rows = []
    for sae_name, result in results.items():
        metrics = evaluate_on_sequences(result.sae, held_out)
        step_ms = 1e3 * result.median_step_seconds
        rows.append({"name": sae_name, "arch": arches[sae_name], **metrics, "step_ms": step_ms})
    active = float((held_out.feature_acts > 0).float().sum(-1).mean())
    return {
        "regime": name,
        "rows": rows,
        "oracles": oracle_rows(held_out, train),
        "true_l0": active,
        "train_seconds": train_seconds,
        "data": {**REGIMES[name]["data"], "seq_len": args.seq_len, "n_sequences": args.n_sequences},
        "sae": {k: v for k, v in regime.items() if k != "data"},
        "histories": {sae_name: result.history for sae_name, result in results.items()},
    }


def _fmt(row: dict[str, Any], key: str, digits: int = 3) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_regime(report: dict[str, Any]) -> None:
    print(f"\n### regime {report['regime']} (true L0 {report['true_l0']:.1f})\n")
    print(
        "| run | MCC persistent | MCC transient | MCC | expl. var. | L0 | autocorr error "
        "(persistent / transient) | redundant pairs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in report["rows"] + report["oracles"]:
        split = (
            f" ({_fmt(r, 'autocorr_error_persistent', 4)} / "
            f"{_fmt(r, 'autocorr_error_transient', 4)})"
            if "autocorr_error_transient" in r
            else ""
        )
        print(
            f"| {r['name']} | {_fmt(r, 'mcc_persistent')} | {_fmt(r, 'mcc_transient')} | "
            f"{_fmt(r, 'mcc')} | {_fmt(r, 'explained_variance')} | {_fmt(r, 'l0', 1)} | "
            f"{_fmt(r, 'autocorr_error', 4)}{split} | {_fmt(r, 'redundant_pairs')} |"
        )


def target_check(report: dict[str, Any]) -> dict[str, Any]:
    """Temporal methods vs ``standard`` and the best oracle: the share of the autocorrelation
    error gap ``standard - oracle`` that the best temporal run closes among those whose
    explained variance is within 0.03 of ``standard`` (target: >= 50 %). Also the share of the
    gap to the supervised SAE encoder, the best encoder of an SAE's own form."""
    rows = {r["name"]: r for r in report["rows"]}
    base = rows[BASELINE]
    oracles = {o["name"]: o["autocorr_error"] for o in report["oracles"]}
    oracle = min(oracles.values())
    sae_oracle = oracles["oracle SAE encoder (supervised)"]
    temporal = [r for r in report["rows"] if r["arch"] in TEMPORAL]
    eligible = [r for r in temporal if base["explained_variance"] - r["explained_variance"] <= 0.03]
    best = min(eligible or temporal, key=lambda r: r["autocorr_error"])

    def closed(reference: float) -> float:
        gap = base["autocorr_error"] - reference
        return (base["autocorr_error"] - best["autocorr_error"]) / gap if gap > 0 else float("nan")

    return {
        "best": best["name"],
        "gap": base["autocorr_error"] - oracle,
        "closed": closed(oracle),
        "closed_vs_sae_encoder": closed(sae_oracle),
        "ev_drop": base["explained_variance"] - best["explained_variance"],
        "met": bool(eligible) and closed(oracle) >= 0.5,
    }


def write_plots(reports: list[dict[str, Any]], out: Path) -> None:
    """``metrics_comparison_<regime>.png`` and ``training_curves_<regime>.png``."""
    from sae_lens_ext_plugins.temporal_consistency.plots import (
        plot_metrics_comparison,
        plot_training_curves,
    )

    for report in reports:
        name = report["regime"]
        plot_metrics_comparison(report["rows"], out / f"metrics_comparison_{name}.png")
        plot_training_curves(report["histories"], out / f"training_curves_{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regimes", default="easy,hard")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-sequences", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--d-sae", type=int, default=0, help="override the regime's d_sae")
    parser.add_argument("--l1", type=float, default=0.0, help="override the regime's L1")
    parser.add_argument("--k", type=float, default=0.0, help="override the regime's k")
    parser.add_argument(
        "--runs",
        default="standard,temporal_consistency,temporal_contrastive,tsae,matryoshka_batchtopk",
        help="architectures trained with the regime's settings",
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help='extra SAE, "name=arch:key=value,...": arch one of standard, '
        "temporal_consistency, temporal_contrastive, tsae, matryoshka_batchtopk",
    )
    parser.add_argument(
        "--no-tuned",
        dest="tuned",
        action="store_false",
        help="skip the tuned variants of the temporal methods",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/out", help="folder for the report and plots")
    smaller = ["--regimes", "easy", "--steps", "5", "--n-sequences", "32", "--batch-size", "256"]
    args = parser.parse_args(smoke_argv(None, [*smaller, "--no-tuned"]))
    torch.set_num_threads(args.threads)
    import sae_lens  # noqa: F401  (registers plugin architectures)

    start = time.time()
    reports = []
    for name in filter(None, args.regimes.split(",")):
        report = run_regime(name, args)
        print_regime(report)
        reports.append(report)
        if BASELINE not in {r["name"] for r in report["rows"]}:
            continue
        report["target"] = t = target_check(report)
        print(
            f"\ntarget ({name}): best temporal method {t['best']} closes "
            f"{100 * t['closed']:.0f}% of the autocorr-error gap {t['gap']:.4f} "
            f"(standard - oracle; target >= 50%), explained variance "
            f"{-t['ev_drop']:+.3f} vs standard (target >= -0.03): "
            f"{'met' if t['met'] else 'NOT met'}; it closes "
            f"{100 * t['closed_vs_sae_encoder']:.0f}% of the gap to the supervised SAE encoder; "
            f"trained in {report['train_seconds']:.0f} s"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_plots(reports, out)
    (out / "temporal_benchmark.json").write_text(
        json.dumps({"args": vars(args), "reports": reports}, indent=2, default=str)
    )
    print(f"\nwrote {out}/temporal_benchmark.json ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
