"""``run_bench``: prepare the SAE and model once, run each bench's module, write its file."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_ext.bench.absorption import run_absorption
from sae_lens_ext.bench.core import run_core
from sae_lens_ext.bench.output import write_extra_results
from sae_lens_ext.bench.prepared import BenchRun, prepared_run
from sae_lens_ext.bench.process_state import (
    global_rng_restored,
    grad_mode_restored,
    tokenizer_restored,
)
from sae_lens_ext.bench.scr_and_tpp import run_scr, run_tpp
from sae_lens_ext.bench.settings import DEFAULT_BENCHES, BenchSettings, check_benches
from sae_lens_ext.bench.sparse_probing import run_sparse_probing
from sae_lens_ext.bench.sparse_probing_sae_probes import run_sae_probes

if TYPE_CHECKING:
    from sae_lens import SAE

ExtraMetrics = Callable[[BenchRun], Mapping[str, Any]]

#: Each bench's runner (one module each, named as SAE-Bench's ``sae_bench.evals.*``).
RUNNERS: dict[str, Callable[[BenchRun], Path]] = {
    "core": run_core,
    "absorption": run_absorption,
    "sparse_probing": run_sparse_probing,
    "sparse_probing_sae_probes": run_sae_probes,
    "scr": run_scr,
    "tpp": run_tpp,
}


def run_bench(
    sae: SAE | str | Path,
    benches: Sequence[str] = DEFAULT_BENCHES,
    settings: BenchSettings | None = None,
    output_dir: str | Path = "eval_results",
    *,
    name: str | None = None,
    extra_metrics: ExtraMetrics | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Run SAE-Bench's ``benches`` on one SAE; return each result file by bench.

    Args:
        sae: an ``SAE`` object, a folder for ``SAE.load_from_disk``, or a hub id
            ``release/sae_id`` (loaded as SAE-Bench loads it: ``from_pretrained``,
            then ``fold_W_dec_norm``).
        benches: names from :data:`~sae_lens_ext.bench.settings.BENCHES`.
        settings: see :class:`~sae_lens_ext.bench.settings.BenchSettings`.
        output_dir: results go to ``output_dir/<bench>/<release>_<sae_id>_eval_results.json``.
        name: the ``release`` part of the file name for an object or a folder
            (default: the folder's name, or ``custom``); their ``sae_id`` is
            ``custom_sae``, as SAE-Bench names custom SAEs.
        extra_metrics: called once with the prepared
            :class:`~sae_lens_ext.bench.prepared.BenchRun`; what it returns is written
            beside SAE-Bench's results, to
            ``output_dir/sae_lens_ext/<release>_<sae_id>_eval_results.json``
            (key ``sae_lens_ext`` of the returned dict).
        progress: called with a line when each bench (and ``extra_metrics``) starts and
            ends; core also shows SAE-Bench's own batch bars (its ``verbose``).

    The SAE is moved to the evaluation device and dtype (as SAE-Bench's ``run_eval``
    does); its object and cfg are otherwise left as they were, and so are the working
    directory, the global random generators, grad mode and jaxtyping's switch.
    """
    settings = settings or BenchSettings()
    check_benches(benches, settings)
    paths: dict[str, Path] = {}
    say = progress or (lambda line: None)
    steps = [*benches, *(["sae_lens_ext"] if extra_metrics is not None else [])]
    with (
        global_rng_restored(),
        grad_mode_restored(),
        prepared_run(sae, settings, output_dir, name=name, benches=benches) as run,
    ):
        for i, bench in enumerate(steps, 1):
            say(f"[{i}/{len(steps)}] {bench}: running")
            t0 = time.perf_counter()
            if extra_metrics is not None and bench == "sae_lens_ext":
                paths[bench] = write_extra_results(run, extra_metrics(run))
            else:
                with tokenizer_restored(run.model.tokenizer):  # sae-probes changes its sides
                    paths[bench] = RUNNERS[bench](run)
            say(f"[{i}/{len(steps)}] {bench}: done in {time.perf_counter() - t0:.0f}s")
    return paths
