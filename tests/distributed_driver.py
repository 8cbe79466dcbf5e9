"""Run several ``sae-lens`` commands in one interpreter, so that torch and SAE-Lens are
imported once: in one process, or on every rank of a torchrun launch (the process group
is then set up once around all of them, and each command finds it in place).

    python tests/distributed_driver.py RUNS.json
    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_driver.py RUNS.json

RUNS.json: a list of argument lists, e.g. ``[["demo", "-o", "a", ...], ["train", ...]]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sae_lens_ext.cli import cli
from sae_lens_ext.training import distributed


def main() -> None:
    runs = json.loads(Path(sys.argv[1]).read_text())
    with distributed.process_group("cpu"):
        for args in runs:
            cli.main(args, prog_name="sae-lens", standalone_mode=False)


if __name__ == "__main__":
    main()
