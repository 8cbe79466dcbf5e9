"""``scripts/setup.sh``'s logic, with a stand-in interpreter that records every pip call
(the real fresh-machine set-up, with an empty pip cache, is what ``.ci/run`` runs)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.helpers import REPO

STUB = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../calls.log"
case "$*" in
  *"m.version('torch')"*) echo "torch==2.13.0" ;;
  *"import sae_lens, torch"*) echo "setup: sae-lens x, torch 2.13.0, cuda=False" ;;
esac
exit 0
"""


def run_setup(venv: Path, **env: str) -> list[str]:
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    python.write_text(STUB)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh")],
        env={**os.environ, "SAE_LENS_EXT_VENV": str(venv), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return (venv / "calls.log").read_text().splitlines()


def test_default_set_up_uses_build_isolation_and_removes_torchvision(tmp_path: Path) -> None:
    calls = run_setup(tmp_path / "venv")
    install = [c for c in calls if "install" in c and "-e .[dev]" in c]
    assert install and "--no-build-isolation" not in install[0] and " -c " not in install[0]
    assert any("uninstall -q -y torchvision" in c for c in calls)
    assert not any(" install -q torch" in c for c in calls)  # no torch of its own choosing


def test_a_chosen_torch_is_installed_first_and_kept(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    calls = run_setup(venv, SAE_LENS_EXT_TORCH_INDEX="https://download.pytorch.org/whl/cpu")
    first = next(c for c in calls if "install" in c)
    assert "install -q torch --index-url https://download.pytorch.org/whl/cpu" in first
    main = next(c for c in calls if "-e .[dev]" in c)
    assert main.endswith(f"-c {venv}/.torch-constraint.txt")
    assert (venv / ".torch-constraint.txt").read_text().strip() == "torch==2.13.0"


def test_a_second_run_only_rechecks(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run_setup(venv)
    (venv / "calls.log").unlink()
    calls = run_setup(venv)
    assert not any("-e .[dev]" in c for c in calls)
