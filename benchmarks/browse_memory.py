"""Peak memory of ``sae-lens browse``'s statistics against its bound (docs/browse.md).

Feeds synthetic latent activations (about 1 % of latents on per token; one batch, rolled)
of a ``d_sae``-latent SAE through the browser's collector, as ``sae-lens browse`` batches
them, and prints the growth of the process's peak resident memory after 10 batches, at half
of the tokens and at the end, beside ``memory_bound``. The model's and SAE's own forward
passes are not part of it::

    .venv/bin/python benchmarks/browse_memory.py --tokens 400_000 --latents 1000
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from smoke import smoke_argv

from sae_lens_ext.training.host_memory import keep_freed_host_memory


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss: KiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-sae", type=int, default=16_384)
    parser.add_argument("--latents", default="1000", help="browsed latents, or 'all'")
    parser.add_argument("--tokens", type=lambda v: int(v.replace("_", "")), default=400_000)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--d-in", type=int, default=768)
    args = parser.parse_args(smoke_argv(argv, ["--d-sae", "512", "--tokens", "20_000"]))
    keep_freed_host_memory()  # as every sae-lens command
    from sae_lens_ext.browse.collect import LatentCollector, batch_contexts, memory_bound

    n = args.d_sae if args.latents == "all" else min(int(args.latents), args.d_sae)
    T, batch = args.context, batch_contexts(args.context, args.d_sae)
    torch.manual_seed(0)
    acts = torch.relu(torch.randn(batch, T, args.d_sae) - 2.33)
    tokens = torch.randint(1, 50_000, (batch, T))
    base = peak_gib()
    collector = LatentCollector(args.d_sae, range(n), context_size=T)
    read, marks, t0 = 0, [], time.perf_counter()
    steps = -(-args.tokens // (batch * T))
    for step in range(steps):
        collector.update(acts.roll(step % batch, 0), tokens)
        read += batch * T
        if step + 1 in (10, steps // 2):
            marks.append(f"{read:,} tokens: +{peak_gib() - base:.3f} GiB")
    marks.append(f"{read:,} tokens: +{peak_gib() - base:.3f} GiB")
    bound = memory_bound(args.d_sae, n, T, args.d_in) / 2**30
    print(
        f"d_sae {args.d_sae:,}, {n:,} latents browsed, context {T}, batch {batch} contexts; "
        f"state {collector.state_bytes() / 2**20:.0f} MiB; peak growth "
        f"{'; '.join(marks)}; memory_bound {bound:.2f} GiB; {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
