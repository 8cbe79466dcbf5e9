"""CUDA check and step-time comparison on a GPU (run on a machine with one).

For each architecture: trains through SAE-Lens's unchanged SAETrainer on random
GPU batches (bf16 autocast on and off), with dead-latent resampling forced to
happen, then checks a save -> load round trip on the same device. Prints one JSON
line per configuration with the median step time and peak memory as ratios to
upstream `standard` measured in the same process.

    python benchmarks/gpu_check.py --d-in 768 --d-sae 24576 --batch 4096 --steps 60

``--device cpu`` runs the same code without a GPU (no memory figures); a smoke run
(``SAE_LENS_EXT_SMOKE=1``) does so on tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from smoke import is_smoke, smoke_argv

CONFIGS = {
    "standard": ("standard", {"l1_coefficient": 1.0}),
    "freq_ordered": ("freq_ordered", {"resample_dead_every": 20}),
    "freq_ordered+all": (
        "freq_ordered",
        {"resample_dead_every": 20, "layer_norm": True, "skip_projection": True},
    ),
    "temporal_consistency": ("temporal_consistency", {"resample_dead_every": 20}),
    "temporal_contrastive": (
        "temporal_consistency",
        {"temporal_coefficient": 0.0, "temporal_contrastive_coefficient": 0.1},
    ),
}


def trainer_config(steps: int, batch: int, autocast: bool, device: str):
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(  # upstream's defaults otherwise: constant lr 3e-4, no checkpoints
        total_training_samples=steps * batch,
        train_batch_size_samples=batch,
        lr_end=3e-4,  # SAETrainer needs it set (the runners' configs set it)
        device=device,
        autocast=autocast,
        dead_feature_window=5,
        feature_sampling_window=1000,
        logger=LoggingConfig(log_to_wandb=False),
    )


class StepTimer:
    """A data provider that times the steps between its batches (the trainer draws one
    batch per step), synchronising the device first so queued kernels are counted."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data, self.drawn, self.times = data, 0, []
        self.cuda = data.device.type == "cuda"
        self.last: float | None = None

    def __iter__(self) -> StepTimer:
        return self

    def __next__(self) -> torch.Tensor:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last, self.drawn = now, self.drawn + 1
        return self.data[self.drawn % len(self.data)]


def run(name: str, args: argparse.Namespace, autocast: bool) -> dict:
    import gc

    from sae_lens import SAE
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
    from sae_lens.training.sae_trainer import SAETrainer

    cuda = args.device == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        base_mem = torch.cuda.memory_allocated()
    arch, kwargs = CONFIGS[name]
    sae_cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[arch]
    torch.manual_seed(0)
    sae = sae_cls(cfg_cls(d_in=args.d_in, d_sae=args.d_sae, device=args.device, **kwargs))
    with torch.no_grad():
        if hasattr(sae, "b_enc"):
            sae.b_enc[: args.d_sae // 50] = -1e3  # dead on purpose: resampling must happen
    data = torch.randn(8, args.batch, args.d_in, device=args.device)
    timer = StepTimer(data)
    cfg = trainer_config(args.steps, args.batch, autocast, args.device)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=timer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit()
    peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**20 if cuda else None
    x = data[0][:256]
    with tempfile.TemporaryDirectory() as d:
        sae.save_inference_model(d)
        loaded = SAE.load_from_disk(d, device=args.device)
        with torch.no_grad():
            a, b = sae.encode(x), loaded.encode(x)
            same = bool(torch.equal(a, b)) and bool(torch.equal(sae.decode(a), loaded.decode(b)))
    return {
        "config": name,
        "autocast_bf16": autocast,
        "median_step_ms": statistics.median(timer.times[4:]) * 1e3,  # steps 6 onwards
        "peak_mem_mib": peak,  # this run's own peak; None off CUDA
        "resampled": int(getattr(sae, "n_resampled", -1)),
        "save_load_identical": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=24576)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a check without GPU")
    smaller = ["--d-in", "16", "--d-sae", "64", "--batch", "32", "--steps", "12", "--device", "cpu"]
    args = parser.parse_args(smoke_argv(None, smaller))
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(json.dumps({"device": name, "torch": torch.__version__, "smoke": is_smoke()}))
    for autocast in (False, True):
        base = None
        for config in CONFIGS:
            row = run(config, args, autocast)
            base = base or row
            row["step_time_ratio"] = row["median_step_ms"] / base["median_step_ms"]
            if row["peak_mem_mib"] is not None:
                row["peak_mem_ratio"] = row["peak_mem_mib"] / base["peak_mem_mib"]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
