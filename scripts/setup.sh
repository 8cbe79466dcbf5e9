#!/usr/bin/env bash
# Create ./.venv and install sae-lens-ext, its built-in plugins and the dev tools.
# Idempotent: a second run only re-checks. Works offline from a local wheel cache
# if pip is configured for one, and on GPU machines (PyPI's torch is CUDA-enabled).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${SAE_LENS_EXT_VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Optional torch pin, e.g. SAE_LENS_EXT_TORCH="torch==2.13.0" for a CPU-only wheel.
if [ -n "${SAE_LENS_EXT_TORCH:-}" ]; then
    "${PIP[@]}" install -q "$SAE_LENS_EXT_TORCH"
fi
"${PIP[@]}" install -q hatchling
"${PIP[@]}" install -q --no-build-isolation -e ".[dev]"

# sae-bench requires torchvision but never imports it; a torchvision built for
# another torch breaks `import transformers` ("operator torchvision::nms does
# not exist"). Drop it when it does not import cleanly.
if ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
    echo "setup: removing a torchvision that does not match torch (sae-bench does not use it)"
    "${PIP[@]}" uninstall -q -y torchvision
fi
"$VENV/bin/python" -c "import sae_lens, torch; print(f'setup: sae-lens {sae_lens.__version__}, torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
