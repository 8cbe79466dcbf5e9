"""Why compiled ``freq_ordered`` is slower than its eager step in bf16 on CPU.

Under bf16 autocast, ``freq_ordered``'s backward needs only the bf16 copy of the codes (the
decoder's input) and the ReLU's mask, so AOTAutograd's partitioner saves the mask as a
``bool`` tensor where upstream's ``standard`` (whose L1 backward reads the float codes)
recomputes it from the codes. Inductor fuses the encoder's elementwise tail into one
kernel either way. This script times that kernel alone, compiled, with and without a
``bool`` output (and with the same mask written as ``uint8``), interleaved, medians of
CPU time (CUDA: wall time between synchronizations)::

    .venv/bin/python benchmarks/relu_mask_benchmark.py --size 4096x16384
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from smoke import smoke_argv
from step_benchmark import clock

from sae_lens_ext.training.host_memory import keep_freed_host_memory


def tail(h_bf16: torch.Tensor, b_enc: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pre-activations, codes and the decoder's bf16 input (what both architectures write)."""
    hidden = h_bf16.float() + b_enc
    acts = hidden.clamp_min(0)
    return hidden, acts, acts.to(torch.bfloat16)


def tail_bool_mask(h_bf16: torch.Tensor, b_enc: torch.Tensor) -> tuple[torch.Tensor, ...]:
    hidden, acts, acts_bf16 = tail(h_bf16, b_enc)
    return hidden, acts, acts_bf16, acts <= 0


def tail_uint8_mask(h_bf16: torch.Tensor, b_enc: torch.Tensor) -> tuple[torch.Tensor, ...]:
    hidden, acts, acts_bf16 = tail(h_bf16, b_enc)
    return hidden, acts, acts_bf16, (acts <= 0).to(torch.uint8)


VARIANTS: dict[str, tuple[Callable[..., tuple[torch.Tensor, ...]], bool]] = {
    "compiled, no mask": (tail, True),
    "compiled, bool mask": (tail_bool_mask, True),
    "compiled, uint8 mask": (tail_uint8_mask, True),
    "eager, bool mask": (tail_bool_mask, False),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="4096x16384", help="batch x d_sae")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(smoke_argv(argv, ["--size", "256x512", "--rounds", "2"]))
    torch.set_num_threads(1)
    keep_freed_host_memory()  # as `sae-lens train` does: no page faults on reused buffers
    rows, cols = (int(v) for v in args.size.split("x"))
    h = torch.randn(rows, cols, device=args.device).to(torch.bfloat16)
    b = torch.randn(cols, device=args.device)
    now = clock(args.device)
    fns = {name: torch.compile(f) if compiled else f for name, (f, compiled) in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # compile and warm up
        fn(h, b), fn(h, b)
    for i in range(args.rounds):
        for name in list(fns)[:: -1 if i % 2 else 1]:
            start = now()
            fns[name](h, b)
            times[name].append(now() - start)
    base = statistics.median(times["compiled, no mask"])
    print(f"{args.device}, torch {torch.__version__}, {rows} x {cols}, 1 thread")
    print("| kernel | ms | / compiled, no mask |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t) * 1e3:.1f} | {statistics.median(t) / base:.2f} |")


if __name__ == "__main__":
    main()
