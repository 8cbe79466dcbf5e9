"""Training-step time and peak memory of each architecture against upstream ``standard``.

Every row trains through SAE-Lens's unchanged ``SAETrainer.step`` (forward, backward,
gradient clipping, Adam; what upstream's runner and ``sae-lens train`` both call) on the
same random batches (a fresh ``N(0, I)`` batch each round, the same for every row), in one
process. Rows take their steps round-robin, one step each per round, the order reversing
every round; a row's time is the median of its step times and
its ratio is the median over rounds of (its step time / ``standard``'s step time in the
same round), so load from other processes cancels out of the ratios. CPU: a step's time is
this process's CPU time (``time.process_time``, one torch thread); CUDA: wall time between
two ``torch.cuda.synchronize()``.

Peak memory of one step, rows one at a time: on CUDA ``torch.cuda.max_memory_allocated``
above what was allocated before the row's SAE was built (parameters, Adam state, the batch
and every transient of the step). On CPU, which has no allocator peak counter, the same sum
counted exactly: the bytes of parameters, buffers and optimizer state, plus the peak of
the bytes held by tensors created during the step (every aten call's output storage is
recorded until it is freed, :class:`LiveBytes`); ``--explain-memory`` prints what is
alive at each row's peak.

``--compile`` adds rows whose ``training_forward_pass`` is compiled as upstream's
``compile_sae=True`` does it (``torch.compile``, inductor), with the compile time (the
first step's extra wall time; inductor's on-disk cache starts empty unless
``--warm-compile-cache``, so it is the cold figure a first run pays). Sizes are ``d_in x d_sae x batch``.

The sparse step (``sae_lens_ext.training.sparse``). A fresh SAE fires about half its latents;
``--l0 N`` holds the codes at about ``N`` active latents per row, as a trained SAE's are: ReLU
rows through ``b_enc`` (set before every step, untimed: :func:`set_l0`), TopK rows through
``k``. The last row of each table, ``one dense product``, is the encoder's product alone
(``x @ W_enc`` under the same autocast): its time over a row's step time is the share of the
step the sparse step cannot avoid. ``--paths`` adds each row with its step forced dense and
sparse (``sparse_step``); with several ``--l0`` values the output ends with the sparse step's
time over the dense step's at each density (the crossover).

    .venv/bin/python benchmarks/step_benchmark.py --sizes 768x16384x4096 --dtypes fp32,bf16
    .venv/bin/python benchmarks/step_benchmark.py --l0 32 --extra --paths
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from smoke import smoke_argv
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# row name -> (architecture, config fields, compiled)
ROWS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "standard": ("standard", {}, False),
    "freq_ordered": ("freq_ordered", {}, False),
    "temporal_consistency": ("temporal_consistency", {}, False),
    "temporal_contrastive": (
        "temporal_consistency",
        {"temporal_coefficient": 0.0, "temporal_contrastive_coefficient": 0.1},
        False,
    ),
}
EXTRA_ROWS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "freq_ordered + prefix": ("freq_ordered", {"prefix_coefficient": 1.0}, False),
    "temporal_consistency, normalized": (
        "temporal_consistency",
        {"temporal_loss_form": "normalized"},
        False,
    ),
    "tsae": ("tsae", {}, False),
    "temporal_contrastive, tuned": (
        "temporal_consistency",
        {
            "temporal_coefficient": 0.0,
            "temporal_contrastive_coefficient": 1.0,
            "temporal_contrastive_fraction": 1.0,
        },
        False,
    ),
}
COMPILED_ROWS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "standard, compile_sae": ("standard", {}, True),
    "freq_ordered, compile_sae": ("freq_ordered", {}, True),
    "temporal_consistency, compile_sae": ("temporal_consistency", {}, True),
}
# the same rows with the path forced (``sparse_step``): --paths, and --rows by name
PATH_ROWS: dict[str, tuple[str, dict[str, Any], bool]] = {
    f"{name}, {path}": (arch, {**fields, "sparse_step": path}, False)
    for name, (arch, fields, _) in {**ROWS, **EXTRA_ROWS}.items()
    if arch != "standard"
    for path in ("dense", "sparse")
}
PRODUCT_ROW = "one dense product"  # the encoder's product alone: the sparse step's floor
DTYPES = {"fp32": False, "bf16": True}  # name -> bf16 autocast


@dataclass
class Row:
    name: str
    trainer: Any
    compiled: bool
    times: list[float] = field(default_factory=list)
    warm_up_s: list[float] = field(default_factory=list)
    product: Callable[[torch.Tensor], Any] | None = None  # PRODUCT_ROW: what a step does
    l0: float | None = None  # ReLU codes: b_enc is set for this L0 before every step


def trainer_config(batch: int, device: str, autocast: bool) -> Any:
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(  # upstream's defaults otherwise: constant lr 3e-4, no checkpoints
        total_training_samples=10**12,
        train_batch_size_samples=batch,
        lr_end=3e-4,  # SAETrainer needs it set (the runners' configs set it)
        device=device,
        autocast=autocast,
        logger=LoggingConfig(log_to_wandb=False),
    )


def build_row(name: str, spec: tuple[str, dict[str, Any], bool], size: tuple[int, int, int],
              device: str, autocast: bool, mode: str | None, l0: float | None = None) -> Row:  # fmt: skip
    """A fresh SAE (seed 0) of the row's architecture and an upstream trainer for it; with
    ``l0``, codes with about that many active latents per row (:func:`set_l0`)."""
    from dataclasses import fields as dataclass_fields

    from sae_lens.registry import get_sae_training_class
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_lens_ext.data.windows import mark_layout_served

    arch, settings, compiled = spec
    d_in, d_sae, batch = size
    sae_cls, cfg_cls = get_sae_training_class(arch)
    top_k = "k" in {f.name for f in dataclass_fields(cfg_cls)}
    if l0 and top_k:  # TopK-style codes: k active per row (on average over the batch)
        settings = {**settings, "k": l0}
    torch.manual_seed(0)
    sae = sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, device=device, **settings))
    mark_layout_served(sae)  # random rows: the window layout is the benchmark's choice
    if compiled:  # what LanguageModelSAETrainingRunner._compile_sae_if_needed does
        sae.training_forward_pass = torch.compile(sae.training_forward_pass, mode=mode)
    trainer = SAETrainer(
        cfg=trainer_config(batch, device, autocast), sae=sae, data_provider=iter(())
    )
    return Row(name, trainer, compiled, l0=None if top_k else l0)


@torch.no_grad()
def set_l0(sae: Any, l0: float) -> None:
    """ReLU codes with about ``l0`` active latents per row on the benchmark's batches: with
    ``x ~ N(0, I)``, latent ``i``'s pre-activation is ``N(b_enc[i] - b_dec @ W_enc[:, i],
    ||W_enc[:, i]||^2)``, so ``b_enc[i] = b_dec @ W_enc[:, i] - z ||W_enc[:, i]||`` with
    ``P(N(0, 1) > z) = l0 / d_sae`` makes it fire on a ``l0 / d_sae`` share of rows. Set
    before every step (untimed): Adam's first steps move every weight by about ``lr``, which
    grows the initial ``W_enc`` columns and, left alone, the L0 several-fold."""
    share = min(l0 / sae.cfg.d_sae, 0.5)  # (an L0 above half of d_sae: half)
    z = torch.special.ndtri(torch.tensor(1.0 - share, dtype=torch.float64))
    W = sae.W_enc.float()
    sae.b_enc.copy_(sae.b_dec.float() @ W - float(z) * W.norm(dim=0))


def product_row(base: Row) -> Row:
    """A row that does only the encoder's dense product, ``x @ W_enc`` of ``base``'s SAE
    under the trainer's autocast: the one product a sparse step cannot avoid."""
    sae, trainer = base.trainer.sae, base.trainer

    @torch.no_grad()
    def product(batch: torch.Tensor) -> Any:
        with trainer.autocast_if_enabled:
            return batch.to(sae.device) @ sae.W_enc

    return Row(PRODUCT_ROW, None, False, product=product)


@torch.no_grad()
def measured_l0(row: Row, batch: torch.Tensor) -> float | None:
    """Active latents per row of the row's SAE on ``batch`` now (after its timed steps)."""
    if row.trainer is None:
        return None
    prepare(row)
    sae = row.trainer.sae
    with row.trainer.autocast_if_enabled:
        acts = sae.encode(batch.to(sae.device))
    return float(torch.count_nonzero(acts)) / acts.shape[0]


def clock(device: str) -> Callable[[], float]:
    if device == "cuda":

        def wall() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        return wall
    return time.process_time


def one_step(row: Row, batch: torch.Tensor) -> None:
    if row.product is not None:
        row.product(batch)
        return
    row.trainer.step(batch)
    row.trainer.n_training_steps += 1


def prepare(row: Row) -> None:
    """Untimed work before a step: the codes' L0 (:func:`set_l0`)."""
    if row.l0 is not None:
        set_l0(row.trainer.sae, row.l0)


class Batches:
    """Batch ``i``: ``N(0, I)`` rows from seed ``i``, the same for every row of a round and
    never seen before (a batch trained on twice would raise its L0: :func:`set_l0`)."""

    def __init__(self, rows: int, d_in: int, device: str) -> None:
        self.rows, self.d_in, self.device = rows, d_in, device
        self._last: tuple[int, torch.Tensor] | None = None

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._last is None or self._last[0] != i:
            g = torch.Generator().manual_seed(i)
            self._last = (i, torch.randn(self.rows, self.d_in, generator=g).to(self.device))
        return self._last[1]


def warm_up(rows: list[Row], batches: Batches, steps: int, device: str) -> None:
    """Untimed first steps of each row (Adam state, compilation), wall time recorded."""
    now = clock(device) if device == "cuda" else time.perf_counter
    for row in rows:
        for i in range(steps):
            prepare(row)
            start = now()
            one_step(row, batches[i])
            row.warm_up_s.append(now() - start)


def time_rows(rows: list[Row], batches: Batches, rounds: int, device: str, first: int = 0) -> None:
    """Round-robin timed steps, the order reversed every other round."""
    now = clock(device)
    for i in range(rounds):
        for row in rows[::-1] if i % 2 else rows:
            prepare(row)
            start = now()
            one_step(row, batches[first + i])
            row.times.append(now() - start)


class LiveBytes(TorchDispatchMode):
    """Bytes held by tensors created under this mode: every aten output storage counts
    from its creation until it is freed; ``peak`` is the most held at once."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, str, tuple[int, ...], str]] = {}
        self.current = self.peak = 0
        self.at_peak: list[tuple[int, str, tuple[int, ...], str]] = []

    def _freed(self, ptr: int) -> None:
        self.current -= self.live.pop(ptr)[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                continue  # a sparse tensor's indices and values are counted where made
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in self.live or storage.nbytes() == 0:
                continue
            self.live[ptr] = (storage.nbytes(), str(func), tuple(t.shape), str(t.dtype))
            self.current += storage.nbytes()
            weakref.finalize(storage, self._freed, ptr)
            if self.current > self.peak:
                self.peak, self.at_peak = self.current, sorted(self.live.values(), reverse=True)
        return out


def persistent_bytes(trainer: Any) -> int:
    """Parameters, buffers, gradients and optimizer state held between steps."""
    tensors = [*trainer.sae.parameters(), *trainer.sae.buffers()]
    tensors += [p.grad for p in trainer.sae.parameters() if p.grad is not None]
    for state in trainer.optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    tensors += [trainer.act_freq_scores, trainer.n_forward_passes_since_fired]
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_step_bytes(row: Row, batch: torch.Tensor, device: str) -> tuple[int, list[Any]]:
    """Peak bytes of one step of ``row`` (see the module docstring) and what is alive then."""
    prepare(row)
    if device == "cuda":
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        one_step(row, batch)
        torch.cuda.synchronize()
        held = persistent_bytes(row.trainer) + batch.numel() * batch.element_size()
        return torch.cuda.max_memory_allocated() - start + held, []
    held = persistent_bytes(row.trainer) + batch.numel() * batch.element_size()
    with LiveBytes() as live:
        one_step(row, batch)
    return held + live.peak, live.at_peak


def parse_size(text: str) -> tuple[int, int, int]:
    d_in, d_sae, batch = (int(v) for v in text.lower().split("x"))
    return d_in, d_sae, batch


def compile_seconds(row: Row) -> float | None:
    """Extra wall time of the first warm-up step over the later ones (compiled rows)."""
    if not row.compiled or len(row.warm_up_s) < 2:
        return None
    return max(0.0, row.warm_up_s[0] - statistics.median(row.warm_up_s[1:]))


def measure(size: tuple[int, int, int], dtype: str, specs: dict[str, Any],
            args: argparse.Namespace, l0: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Every row at one size, dtype and L0: times (interleaved, with the encoder's dense
    product alone as a last row), ratios, peak memory, the L0 the codes had."""
    device, (d_in, _, batch) = args.device, size
    autocast = DTYPES[dtype]
    rows = [build_row(n, s, size, device, autocast, args.mode, l0) for n, s in specs.items()]
    rows.append(product_row(rows[0]))
    batches = Batches(batch, d_in, device)
    warm_up(rows, batches, args.warm_up, device)
    time_rows(rows, batches, args.rounds, device, first=args.warm_up)
    fresh = batches[args.warm_up + args.rounds]
    base, product = rows[0].times, rows[-1].times
    results = []
    for row in rows:
        peak, at_peak = (None, []) if row.product else peak_step_bytes(row, fresh, device)
        ratios = [a / b for a, b in zip(row.times, base, strict=True)]
        results.append(
            {
                "size": "x".join(map(str, size)),
                "dtype": dtype,
                "l0_target": l0,
                "row": row.name,
                "l0": measured_l0(row, fresh),
                "step_ms": statistics.median(row.times) * 1e3,
                "step_ratio": statistics.median(ratios),
                "step_ratio_iqr": quartiles(ratios),
                "product_share": statistics.median(
                    p / t for p, t in zip(product, row.times, strict=True)
                ),
                "peak_mib": None if peak is None else peak / 2**20,
                "compile_s": compile_seconds(row),
                "at_peak": at_peak,
            }
        )
        if args.explain_memory and at_peak:
            explain(row.name, at_peak, size)
        if args.profile and not row.product:
            profile_step(row, fresh, args.profile)
    for r in results:
        r["peak_ratio"] = None if r["peak_mib"] is None else r["peak_mib"] / results[0]["peak_mib"]
    return results


def profile_step(row: Row, batch: torch.Tensor, top: int) -> None:
    """The ``top`` ops (inductor's fused kernels by name) of one step by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if batch.is_cuda:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        one_step(row, batch)
    key = "self_cuda_time_total" if batch.is_cuda else "self_cpu_time_total"
    print(f"\n{row.name}, one step:")
    print(prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=90))


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartiles (the spread of a row's per-round ratios)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def explain(name: str, at_peak: list[Any], size: tuple[int, int, int]) -> None:
    """What is alive at a row's peak, in units of one float32 (batch, d_sae) tensor."""
    unit = size[1] * size[2] * 4
    print(f"  {name}: alive at the peak (units of a float32 batch x d_sae tensor)")
    for nbytes, op, shape, dtype in at_peak:
        if nbytes >= unit / 16:
            print(f"    {nbytes / unit:5.2f}  {op:36s} {shape} {dtype}")


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| size (d_in x d_sae x batch) | dtype | row | L0 | step (ms) | step / standard "
        "| (quartiles) | dense product / step | peak mem (MiB) | peak / standard | compile (s) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        compiled = "-" if r["compile_s"] is None else f"{r['compile_s']:.0f}"
        q1, q3 = r["step_ratio_iqr"]
        l0 = "-" if r["l0"] is None else f"{r['l0']:.0f}"
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        peak_ratio = "-" if r["peak_ratio"] is None else f"{r['peak_ratio']:.3f}"
        lines.append(
            f"| {r['size']} | {r['dtype']} | {r['row']} | {l0} | {r['step_ms']:.1f} | "
            f"{r['step_ratio']:.3f} | {q1:.2f}-{q3:.2f} | {r['product_share']:.2f} | {peak} | "
            f"{peak_ratio} | {compiled} |"
        )
    return "\n".join(lines)


def crossover(results: list[dict[str, Any]]) -> list[str]:
    """For rows run on both paths (``X, sparse`` and ``X, dense``): the sparse step's time
    over the dense step's at each measured density (where it passes 1, sparse stops paying)."""
    lines = []
    for r in results:
        if not r["row"].endswith(", sparse"):
            continue
        twin = r["row"].removesuffix(", sparse") + ", dense"
        same = ("size", "dtype", "l0_target")
        for d in results:
            if d["row"] == twin and all(d[k] == r[k] for k in same) and r["l0"] is not None:
                density = r["l0"] / int(r["size"].split("x")[1])
                lines.append(
                    f"{twin.removesuffix(', dense')} {r['size']} {r['dtype']}: L0 {r['l0']:.0f} "
                    f"(density {density:.2%}): sparse / dense step {r['step_ratio'] / d['step_ratio']:.2f}"
                )
    return lines


def machine(device: str) -> str:
    from importlib.metadata import version

    versions = f"torch {torch.__version__}, sae-lens {version('sae-lens')}"
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, {versions}"
    threads = torch.get_num_threads()
    return (
        f"{platform.processor() or platform.machine()} CPU, {threads} torch thread(s), {versions}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="768x16384x4096", help="d_in x d_sae x batch, ...")
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per row")
    parser.add_argument("--warm-up", type=int, default=3, help="untimed first steps per row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--compile", action="store_true", help="add compile_sae rows")
    parser.add_argument("--mode", default=None, help="torch.compile mode of those rows")
    parser.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="reuse inductor's on-disk cache (default: a fresh one, so compile times are cold)",
    )
    parser.add_argument(
        "--extra", action="store_true", help="add prefix, normalized, tsae, tuned contrastive rows"
    )
    parser.add_argument(
        "--l0",
        default="",
        help="codes with about this many active latents per row (comma list: each in turn); "
        "ReLU rows through b_enc, TopK rows through k (default: as initialised)",
    )
    parser.add_argument(
        "--paths", action="store_true", help="add each row with its step forced dense and sparse"
    )
    parser.add_argument(
        "--rows", action="append", default=[], help="only this row (repeat; standard is kept)"
    )
    parser.add_argument("--explain-memory", action="store_true")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print each row's top N ops of a step"
    )
    parser.add_argument("--json", default=None, help="write the results here")
    smaller = ["--sizes", "64x512x256", "--dtypes", "fp32", "--rounds", "2", "--warm-up", "2",
               "--warm-compile-cache"]  # fmt: skip
    return parser.parse_args(smoke_argv(argv, smaller))


def select_rows(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any], bool]]:
    """The rows asked for (``standard`` always first: every ratio is to it)."""
    specs = {**ROWS, **(EXTRA_ROWS if args.extra else {})}
    if args.paths:
        specs.update({n: s for n, s in PATH_ROWS.items() if n.rsplit(", ", 1)[0] in specs})
    specs.update(COMPILED_ROWS if args.compile else {})
    if args.rows:
        wanted = ["standard", *(n for n in args.rows if n != "standard")]
        specs = {**specs, **EXTRA_ROWS, **PATH_ROWS}
        unknown = [n for n in wanted if n not in specs]
        if unknown:
            raise SystemExit(f"--rows: unknown {unknown}; rows: {', '.join(specs)}")
        specs = {n: specs[n] for n in wanted}
    return specs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:  # name inductor's CPU kernels in the profile
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    import sae_lens  # noqa: F401  (registers the plugin architectures)

    specs = select_rows(args)
    if args.compile and not args.warm_compile_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="step_benchmark_")
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{started}, {machine(args.device)}", flush=True)
    results = []
    l0s = [float(v) for v in args.l0.split(",") if v] or [None]
    for size in map(parse_size, args.sizes.split(",")):
        for dtype in args.dtypes.split(","):
            for l0 in l0s:
                results += measure(size, dtype, specs, args, l0)
                print(table(results[-len(specs) - 1 :]), flush=True)
    print("\n" + table(results))
    for line in crossover(results):
        print(line)
    if args.json:
        for r in results:
            r.pop("at_peak")
        with open(args.json, "w") as f:
            json.dump(
                {"started": started, "machine": machine(args.device), "results": results},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
