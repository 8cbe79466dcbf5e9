#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, offline. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
.venv/bin/ruff check .
.venv/bin/mypy  # sae_lens_ext/ and plugins/ ([tool.mypy] in pyproject.toml)
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
