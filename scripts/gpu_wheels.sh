#!/usr/bin/env bash
# Wheels for a GPU machine without network access whose Python (3.12) already holds torch,
# numpy, pandas, safetensors, tokenizers and the like (the machine this project's device
# tool lends): sae-lens-ext itself and what `import sae_lens` needs besides, at the versions
# installed in ./.venv. Written to ./.whl (git-ignored through .git/info/exclude, about 45 MB;
# WHL=DIR writes elsewhere); benchmarks/gpu_speed.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
WHL="${WHL:-.whl}"
if [ "$WHL" = .whl ] && [ -d .git ]; then
    grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
fi
rm -rf "$WHL" && mkdir "$WHL"
# transformers and huggingface-hub travel too: the versions tested here go together
NEEDED="sae-lens transformer-lens transformers huggingface-hub httpx2 httpcore2 datasets dill
multiprocess better-abc docstring-parser simple-parsing wandb pydantic pydantic-core
annotated-types typing-inspection zstandard googleapis-common-protos truststore platformdirs
opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
opentelemetry-exporter-http-transport opentelemetry-exporter-otlp-common
opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-proto-http"
# shellcheck disable=SC2086
PINS=$(.venv/bin/python -c 'import sys, importlib.metadata as m
print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $NEEDED)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    PLATFORMS+=(--platform "$p")
done
# shellcheck disable=SC2086
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$WHL" $PINS
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$WHL" .
du -sh "$WHL"
