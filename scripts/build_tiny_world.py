"""Build the tiny local models and data the report (docs/report.md) and the tests use.

    python scripts/build_tiny_world.py OUT      # docs/report.md: OUT = runs/tiny

writes ``OUT/lm/`` (a random 2-layer GPT-2 of width 64 with a BPE tokenizer, and a JSONL
text dataset: ``tests/helpers.py::build_tiny_lm``, what the docs call ``./my-model`` and
``./my-text``) and ``OUT/world/`` (``tests/bench_world.py::build_world``: a 2-layer GPT-2
of width 64 whose token embeddings carry each word's first letter, a word-level tokenizer,
and local stand-ins of SAE-Bench's hub datasets under ``OUT/world/data/<hub id>/``).
Offline, seconds; the same seeds give the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.bench_world import build_world  # noqa: E402
from tests.helpers import build_tiny_lm  # noqa: E402


def main(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; remove it or choose another folder")
    lm = build_tiny_lm(out / "lm")
    world = build_world(out / "world")
    print(f"tiny LM: {lm.model_dir} (dataset {lm.dataset_dir})")
    print(f"SAE-Bench world: {world.model_dir} (datasets under {world.data_dir})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/build_tiny_world.py OUTPUT_FOLDER")
    main(Path(sys.argv[1]))
