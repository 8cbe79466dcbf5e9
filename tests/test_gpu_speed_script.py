"""``benchmarks/gpu_speed.sh``, the one command a session lent a GPU runs for issue 14's
figures, runs every step as written (at tiny sizes, on this machine's CPU) and writes the
tables it promises; a failing step makes it exit non-zero. ``scripts/gpu_wheels.sh`` gives
that machine (Python 3.12, no network) what it lacks, from the package index."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, subprocess_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROWS = {"standard", "freq_ordered", "temporal_consistency", "temporal_contrastive"}
PRODUCT = "one dense product"
SPARSE = {
    "standard",
    "freq_ordered",
    "temporal_consistency",
    "freq_ordered + prefix",
    "tsae",
    PRODUCT,
}
COMPILED = {
    "standard, compile_sae",
    "freq_ordered, compile_sae",
    "temporal_consistency, compile_sae",
}


def run_script(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    settings = {"OUT": str(out), "PYTHON": sys.executable, "SAE_LENS_EXT_SMOKE": "1"}
    return subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_speed.sh")],
        env=subprocess_env({**settings, "OMP_NUM_THREADS": "1", **env}),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_every_step_runs_and_writes_its_table(tmp_path: Path) -> None:
    proc = run_script(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "gpu_speed.log").read_text()
    assert "every step passed" in log and "FAILED" not in log
    assert re.search(r"\n\d+ skipped, \d+ deselected", log)  # the CUDA sync test (skips here)
    eager_run = json.loads((tmp_path / "eager.json").read_text())
    assert "torch " in eager_run["machine"] and "sae-lens " in eager_run["machine"]
    eager = eager_run["results"]
    assert {r["row"] for r in eager} == ROWS | {PRODUCT}
    steps = [r for r in eager if r["row"] != PRODUCT]
    assert all(r["step_ms"] > 0 and r["peak_mib"] > 0 for r in steps)
    assert [r["step_ratio"] for r in eager if r["row"] == "standard"] == [1.0]
    sparse_rows = json.loads((tmp_path / "sparse.json").read_text())["results"]
    assert {r["row"] for r in sparse_rows} == SPARSE
    assert all(r["l0_target"] == 32 and r["l0"] for r in sparse_rows if r["row"] != PRODUCT)
    crossover = json.loads((tmp_path / "crossover.json").read_text())["results"]
    assert {r["l0_target"] for r in crossover} == {32, 128, 512, 2048}
    assert "sparse / dense step" in log  # the crossover lines
    for name in ("compiled_768.json", "compiled_2304.json"):
        rows = json.loads((tmp_path / name).read_text())["results"]
        compiled = [r for r in rows if r["row"] in COMPILED]
        assert {r["row"] for r in compiled} == COMPILED
        assert all(r["compile_s"] is not None for r in compiled)
    assert "| compiled, bool mask |" in log  # the ReLU-mask kernel table


def test_a_failing_step_is_reported_and_fails_the_script(tmp_path: Path) -> None:
    """With an interpreter that fails every step (but says sae-lens-ext is installed, so no
    wheel is installed), the script still runs each step, names each failure and exits 1."""
    broken = tmp_path / "python"
    broken.write_text(
        f'#!/bin/sh\ncase "$*" in *importlib.metadata*) exec {sys.executable} "$@";; esac\nexit 3\n'
    )
    broken.chmod(0o755)
    proc = run_script(tmp_path / "out", PYTHON=str(broken))
    log = (tmp_path / "out" / "gpu_speed.log").read_text()
    assert proc.returncode == 1, log
    assert log.count("FAILED: ") == 7 and "a step FAILED" in log
    assert not (tmp_path / "out" / "eager.json").exists()


def test_gpu_wheels_are_complete_and_fit_python_312(tmp_path: Path) -> None:
    """The kit holds sae-lens-ext (its start-up hook and plugin entry points included),
    sae-lens and transformer-lens, every wheel installable on CPython 3.12 x86-64 Linux,
    at the versions installed here."""
    from importlib.metadata import version

    whl = tmp_path / "whl"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_wheels.sh")],
        env=subprocess_env({"WHL": str(whl)}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = {p.name.split("-")[0].lower(): p for p in whl.glob("*.whl")}
    for name in ("sae_lens", "transformer_lens", "transformers", "wandb", "datasets"):
        assert name in wheels, sorted(wheels)
        assert f"-{version(name.replace('_', '-'))}-" in wheels[name].name
    for path in wheels.values():
        python_tag, _, platform = path.name.removesuffix(".whl").split("-")[-3:]
        linux = "manylinux" in platform and platform.endswith("x86_64")
        assert re.fullmatch(r"py3(12)?|cp312", python_tag) and (platform == "any" or linux), path
    with zipfile.ZipFile(wheels["sae_lens_ext"]) as ours:
        names = ours.namelist()
        entry_points = ours.read(next(n for n in names if n.endswith("entry_points.txt")))
    assert "sae_lens_ext_autoload.pth" in names
    assert b"[sae_lens_ext]" in entry_points and b"freq_ordered" in entry_points
