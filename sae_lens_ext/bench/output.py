"""Result files: SAE-Bench's output classes where its tooling looks, and ours beside them.

Each bench writes ``OUTPUT_DIR/<bench>/<release>_<sae_id>_eval_results.json`` in SAE-Bench's
own format (the pydantic classes of each eval's ``eval_output.py``), filled as its
``run_eval`` fills them; metrics that are not SAE-Bench's go to ``OUTPUT_DIR/sae_lens_ext/``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sae_lens_ext.bench.prepared import BenchRun


def output_fields(run: BenchRun, cfg: Any) -> dict[str, Any]:
    """The fields every SAE-Bench output class shares, as its ``run_eval`` functions set them."""
    from sae_bench.sae_bench_utils import get_sae_bench_version, get_sae_lens_version

    return {
        "eval_config": cfg,
        "eval_id": run.eval_id,
        "datetime_epoch_millis": int(datetime.now().timestamp() * 1000),
        "sae_bench_commit_hash": get_sae_bench_version(),
        "sae_lens_id": run.sae_id,
        "sae_lens_release_id": run.release,
        "sae_lens_version": get_sae_lens_version(),
        "sae_cfg_dict": run.sae.cfg.to_dict(),
    }


def save_output(run: BenchRun, bench: str, output: Any) -> Path:
    """Write an SAE-Bench output object to ``bench``'s file for this SAE, as ``run_eval`` does."""
    path = run.result_path(bench)
    output.to_json_file(str(path), indent=2)
    return path


def retagged(run: BenchRun, bench: str, staging: Path, staged_id: str) -> Path:
    """Move a result SAE-Bench wrote for an SAE object to this SAE's own name and id."""
    from sae_bench.sae_bench_utils import general_utils

    staged = Path(general_utils.get_results_filepath(str(staging), run.release, staged_id))
    data = json.loads(staged.read_text())
    data["sae_lens_id"] = run.sae_id
    path = run.result_path(bench)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def write_extra_results(run: BenchRun, metrics: Mapping[str, Any]) -> Path:
    """Write metrics that are not SAE-Bench's beside its results (``sae_lens_ext/``)."""
    path = run.result_path("sae_lens_ext")
    record = {
        "sae_lens_release_id": run.release,
        "sae_lens_id": run.sae_id,
        "model_name": run.model_name,
        "hook_name": run.sae.cfg.hook_name,
        "sae_hook_name": run.sae_hook_name,
        "architecture": run.sae.cfg.architecture(),
        "eval_id": run.eval_id,
        "metrics": dict(metrics),
    }
    path.write_text(json.dumps(record, indent=2, default=str))
    return path
