#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, offline. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_browse.py opens the latent browser in headless Chromium (Debian's package, driven
# through its DevTools pipe: no WebDriver, no download). Installed here when missing and run
# as root; elsewhere that test is skipped and says why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing Debian's chromium for the browser test"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
        || echo "test.sh: chromium could not be installed; the browser test will be skipped"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
.venv/bin/ruff check .
.venv/bin/mypy  # sae_lens_ext/ and plugins/ ([tool.mypy] in pyproject.toml)
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
# Two worker processes (pytest-xdist), each running one test file at a time: about half the
# wall time on two cores. SAE_LENS_EXT_TEST_WORKERS=0 runs in this process (a later -n in the
# arguments wins too).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${SAE_LENS_EXT_TEST_WORKERS:-2}" \
    --dist loadfile "$@"
