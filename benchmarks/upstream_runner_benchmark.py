"""``freq_ordered`` at its defaults through SAE-Lens's own ``SyntheticSAERunner``, against
upstream ``standard`` reordered by frequency after training.

The runner cannot tell an SAE the run's length, so the defaults' prefix ramp runs over
``FALLBACK_TRAINING_STEPS``; the row "told the run's length" gives the ramp in steps
(``prefix_warm_up_steps`` = the run's steps), as ``sae-lens train`` would. Zipfian synthetic
model (SAE-Lens's ``SyntheticModelConfig``, firing probabilities from 0.3 down to 0.005),
upstream's runner defaults otherwise (lr 3e-4, batch 1024, constant schedule). Metrics on
fresh samples: ground-truth MCC and explained variance (``eval_sae_on_synthetic_data``), and
the explained variance of the first 10 / 25 / 50 % of the latents.

    .venv/bin/python benchmarks/upstream_runner_benchmark.py --features 512 --d-in 64 --d-sae 512 --steps 976
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import torch
from smoke import smoke_argv


def run(sae_cfg: Any, args: argparse.Namespace) -> tuple[Any, Any, float]:
    """Train ``sae_cfg`` with upstream's runner; the trained SAE and its synthetic model."""
    from sae_lens.config import LoggingConfig
    from sae_lens.synthetic import SyntheticModelConfig, ZipfianFiringProbabilityConfig
    from sae_lens.synthetic.synthetic_sae_runner import SyntheticSAERunner, SyntheticSAERunnerConfig

    model = SyntheticModelConfig(
        num_features=args.features,
        hidden_dim=args.d_in,
        firing_probability=ZipfianFiringProbabilityConfig(
            exponent=1.0, max_prob=0.3, min_prob=0.005
        ),
        seed=0,
    )
    torch.manual_seed(0)
    cfg = SyntheticSAERunnerConfig(
        synthetic_model=model,
        sae=sae_cfg,
        training_samples=args.steps * args.batch_size,
        batch_size=args.batch_size,
        lr=args.lr,
        output_path=None,
        checkpoint_path=None,
        run_final_eval=False,
        logger=LoggingConfig(log_to_wandb=False),
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning: what this row measures
        result = SyntheticSAERunner(cfg).run()
    return result.sae.eval(), result.synthetic_model, time.perf_counter() - start


def evaluate(sae: Any, synthetic: Any, reorder: bool, samples: int) -> dict[str, float]:
    from sae_lens.synthetic import eval_sae_on_synthetic_data
    from sae_lens_ext_plugins.freq_ordered.metrics import (
        measure_frequencies,
        prefix_explained_variance,
    )
    from sae_lens_ext_plugins.freq_ordered.reorder import reorder_by_frequency

    with torch.random.fork_rng():
        torch.manual_seed(123)
        quality = eval_sae_on_synthetic_data(
            sae, synthetic.feature_dict, synthetic.activation_generator, num_samples=samples
        )
        torch.manual_seed(124)
        x = synthetic.feature_dict(synthetic.activation_generator.sample(samples)).detach()
    if reorder:
        reorder_by_frequency(sae, measure_frequencies(sae, x))
    prefix = prefix_explained_variance(sae, x, (0.1, 0.25, 0.5))
    return {"mcc": quality.mcc, "ev": quality.explained_variance, "l0": quality.sae_l0, **{
        f"pev{round(100 * f)}": v for f, v in prefix.items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--steps", type=int, default=976)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-samples", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1)
    smaller = ["--features", "64", "--d-in", "16", "--d-sae", "64", "--steps", "20",
               "--eval-samples", "2048"]  # fmt: skip
    args = parser.parse_args(smoke_argv(argv, smaller))
    torch.set_num_threads(args.threads)
    import sae_lens  # noqa: F401  (registers the plugins)
    from sae_lens import logger
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
    from sae_lens_ext_plugins.freq_ordered.sae import FreqOrderedTrainingSAEConfig

    from sae_lens_ext.training.sae import FALLBACK_TRAINING_STEPS

    logger.setLevel("WARNING")
    size = {"d_in": args.d_in, "d_sae": args.d_sae}
    rows = {
        "standard, reordered by frequency": StandardTrainingSAEConfig(**size),
        f"freq_ordered defaults (ramp over the fallback's {FALLBACK_TRAINING_STEPS} steps)": (
            FreqOrderedTrainingSAEConfig(**size)
        ),
        "freq_ordered defaults, told the run's length": FreqOrderedTrainingSAEConfig(
            **size, prefix_warm_up_steps=args.steps
        ),
    }
    print("| row | MCC | EV | L0 | pEV@10% | pEV@25% | pEV@50% | train (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, cfg in rows.items():
        sae, synthetic, seconds = run(cfg, args)
        r = evaluate(sae, synthetic, name.startswith("standard"), args.eval_samples)
        print(
            f"| {name} | {r['mcc']:.3f} | {r['ev']:.3f} | {r['l0']:.1f} | {r['pev10']:.3f} | "
            f"{r['pev25']:.3f} | {r['pev50']:.3f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
