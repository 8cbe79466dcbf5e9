"""Evaluate any SAE-Lens SAE with SAE-Bench's own evaluation code.

:func:`run_bench` runs SAE-Bench's evaluations (``core``, ``absorption``,
``sparse_probing``, ``sparse_probing_sae_probes``, ``scr``, ``tpp``) on one SAE and
writes each result where SAE-Bench's tooling looks for it:
``OUTPUT_DIR/<bench>/<release>_<sae_id>_eval_results.json``, in SAE-Bench's own
output format (the pydantic classes of each eval's ``eval_output.py``).

Where the metrics come from: each eval runs through SAE-Bench's own per-SAE
functions, which take a model object (``core.main.run_evals``,
``absorption``'s two experiments, ``run_eval_single_sae`` of sparse probing and of
SCR/TPP) or SAE-Bench's own ``run_eval`` where it loads no model
(``sparse_probing_sae_probes``, after sae-probes' own ``ensure_dataset_activations``
has cached the model's activations from the model object). Only what SAE-Bench's
``run_eval`` functions do around those calls is done here: loading the model
(SAE-Bench loads it by hub name only), choosing scratch folders (SAE-Bench's
defaults are in the working directory and inside its installed package), and
packing the results into SAE-Bench's output classes exactly as its ``run_eval``
does. No SAE-Bench module is patched.

The package mirrors SAE-Bench's ``sae_bench/evals/`` layout:

* :mod:`.settings`: the benches, :class:`BenchSettings`, SAE-Bench's config classes
  and per-model defaults, which benches can read an SAE;
* :mod:`.models`: the SAE and its model as a TransformerLens ``HookedTransformer``;
* :mod:`.prepared`: :class:`BenchRun`, both prepared once for every bench;
* :mod:`.core`, :mod:`.absorption`, :mod:`.sparse_probing`,
  :mod:`.sparse_probing_sae_probes`, :mod:`.scr_and_tpp`: one module per evaluation;
* :mod:`.output`: result files (SAE-Bench's output classes, and ours beside them);
* :mod:`.process_state`: the process-wide changes SAE-Bench needs, each undone;
* :mod:`.errors`: one-line errors naming the fix;
* :mod:`.run`: :func:`run_bench`.

This package is architecture-agnostic and keeps its heavy imports inside functions.
"""

from __future__ import annotations

from sae_lens_ext.bench.errors import (
    BenchDataError,
    ModelTooSmallError,
    OutOfContextError,
    hub_datasets,
)
from sae_lens_ext.bench.models import check_same_activations, load_hooked_transformer, load_sae
from sae_lens_ext.bench.prepared import BenchRun, prepared_run
from sae_lens_ext.bench.run import ExtraMetrics, run_bench
from sae_lens_ext.bench.settings import (
    BENCH_DATA,
    BENCHES,
    DEFAULT_BENCHES,
    SINGLE_TOKEN_BENCHES,
    BenchSettings,
    check_benches,
    encoder_window,
    out_of_context_benches,
    out_of_context_reason,
    sae_bench_config_class,
)

__all__ = [
    "BENCHES",
    "BENCH_DATA",
    "DEFAULT_BENCHES",
    "SINGLE_TOKEN_BENCHES",
    "BenchDataError",
    "BenchRun",
    "BenchSettings",
    "ExtraMetrics",
    "ModelTooSmallError",
    "OutOfContextError",
    "check_benches",
    "check_same_activations",
    "encoder_window",
    "hub_datasets",
    "load_hooked_transformer",
    "load_sae",
    "out_of_context_benches",
    "out_of_context_reason",
    "prepared_run",
    "run_bench",
    "sae_bench_config_class",
]
