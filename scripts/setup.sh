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

# Optional torch first (docs/install.md): from an index of CPU-only wheels
# (SAE_LENS_EXT_TORCH_INDEX=https://download.pytorch.org/whl/cpu), or a pinned
# requirement from pip's usual indexes (SAE_LENS_EXT_TORCH="torch==2.13.0"). The
# install below is then constrained to that torch, so no dependency (sae-bench's
# torchvision pins a torch) replaces it with PyPI's CUDA build.
CONSTRAINT=()
if [ -n "${SAE_LENS_EXT_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" install -q "${SAE_LENS_EXT_TORCH:-torch}" --index-url "$SAE_LENS_EXT_TORCH_INDEX"
elif [ -n "${SAE_LENS_EXT_TORCH:-}" ]; then
    "${PIP[@]}" install -q "$SAE_LENS_EXT_TORCH"
fi
if [ -n "${SAE_LENS_EXT_TORCH_INDEX:-}${SAE_LENS_EXT_TORCH:-}" ]; then
    PINNED="$VENV/.torch-constraint.txt"
    "$VENV/bin/python" -c "import importlib.metadata as m; print('torch==' + m.version('torch').split('+')[0])" > "$PINNED"
    CONSTRAINT=(-c "$PINNED")
fi
# Skip the install when this pyproject.toml and start-up hook are already installed here.
STAMP="$VENV/.sae-lens-ext-installed"
WANT="$(cat pyproject.toml sae_lens_ext/_autoload.py sae_lens_ext/sae_lens_ext_autoload.pth | cksum)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    # Default build isolation: every sdist in the tree (transformers-stream-generator,
    # pulled in by transformer-lens) builds with the build tools it declares, never with
    # whatever this venv or pip's cache happens to hold.
    "${PIP[@]}" install -q -e ".[dev]" ${CONSTRAINT[@]+"${CONSTRAINT[@]}"}
fi

# sae-bench requires torchvision but never imports it, and torchvision only
# hurts here: one built for another torch breaks `import transformers`
# ("operator torchvision::nms does not exist"), and once anything imports a
# recent one, `datasets`' torch formatter fails ("cannot import VideoReader").
if "$VENV/bin/python" -m pip show -q torchvision >/dev/null 2>&1; then
    echo "setup: removing torchvision (required by sae-bench, never used; breaks datasets/transformers)"
    "${PIP[@]}" uninstall -q -y torchvision
fi
"$VENV/bin/python" -c "import sae_lens, torch; print(f'setup: sae-lens {sae_lens.__version__}, torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
echo "$WANT" > "$STAMP"
