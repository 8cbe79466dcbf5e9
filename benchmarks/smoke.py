"""``SAE_LENS_EXT_SMOKE=1``: a benchmark shrinks to a seconds-long run of the same code.

``tests/test_docs.py`` sets it to check that every documented benchmark command still
runs as written; the figures of a smoke run mean nothing.
"""

from __future__ import annotations

import os
import sys


def is_smoke() -> bool:
    return os.environ.get("SAE_LENS_EXT_SMOKE") == "1"


def smoke_argv(argv: list[str] | None, smaller: list[str]) -> list[str]:
    """The command line, with ``smaller`` appended in a smoke run (later flags win)."""
    given = list(sys.argv[1:] if argv is None else argv)
    return [*given, *smaller] if is_smoke() else given
