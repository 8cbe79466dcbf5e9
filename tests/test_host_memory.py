"""Freed host memory stays in malloc's heap under ``sae-lens`` (glibc): steps that
allocate and free large tensors stop faulting fresh pages."""

from __future__ import annotations

import json
import platform

import pytest

from tests.helpers import run_python

STEPS = 100
CODE = f"""
import json, resource, sys, torch
from sae_lens_ext.training.host_memory import keep_freed_host_memory
kept = keep_freed_host_memory()
torch.set_num_threads(1)
x, w = torch.randn(2048, 64), torch.randn(64, 1024)
def step():  # a training step's pattern: (2048, 1024) temporaries, alive together, freed
    h = x @ w
    a = torch.relu(h)
    return float((h * a + a).sum())
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({STEPS}):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"kept": kept, "faults": faults}}))
"""


def measured(env: dict[str, str]) -> dict:
    return json.loads(run_python(CODE, env=env).stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_kept_memory_stops_page_faults():
    kept, plain = measured({}), measured({"SAE_LENS_EXT_KEEP_HOST_MEMORY": "0"})
    assert kept["kept"] is True and plain["kept"] is False
    # each step frees three 8 MiB temporaries (2,048 pages each); glibc's defaults give some
    # of them back and fault them in again, step after step
    assert plain["faults"] > STEPS * 1000, plain
    assert kept["faults"] < STEPS * 2048 / 10, (kept, plain)


def test_every_command_keeps_it():
    """The ``sae-lens`` group raises the thresholds before any subcommand runs."""
    code = (
        "import sys, click\n"
        "from sae_lens_ext.cli import cli\n"
        "from sae_lens_ext.training import host_memory\n"
        "calls = []\n"
        "original = host_memory.keep_freed_host_memory\n"
        "host_memory.keep_freed_host_memory = lambda: calls.append(1) or original()\n"
        "cli.add_command(click.Command('probe', callback=lambda: print('calls', len(calls))))\n"
        "cli(['probe'], standalone_mode=False)\n"
    )
    assert "calls 1" in run_python(code).stdout
