"""Make docs/browse/latent.png and docs/browse/index.png: the screenshots of docs/browse.md.

    python scripts/browse_screenshots.py WORK_FOLDER

Offline, a few minutes on a CPU: builds the tiny local model and text of the tests
(``tests/helpers.py::build_tiny_lm``) in WORK_FOLDER, trains a ``freq_ordered`` SAE on it with
``sae-lens train``, browses it with ``sae-lens browse``, and photographs two pages in headless
Chromium (``tests/chromium.py``; Debian's ``chromium`` package).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.chromium import Chromium, find_chromium  # noqa: E402
from tests.helpers import build_tiny_lm  # noqa: E402

DOCS = REPO / "docs" / "browse"
TRAIN = [
    "--architecture", "freq_ordered", "--hook_name", "transformer.h.1", "--d_in", "64",
    "--d_sae", "256", "--context_size", "32", "--streaming", "False",
    "--is_dataset_tokenized", "False", "--model_class_name", "AutoModelForCausalLM",
    "--training_tokens", "400_000", "--l1_coefficient", "2", "--lr", "1e-3",
    "--normalize_activations", "expected_average_only_in", "--n_batches_for_norm_estimate", "8",
]  # fmt: skip


def sae_lens(*args: str, cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "sae_lens_ext", *args, "--progress", "none"]
    subprocess.run(command, cwd=cwd, env=env, check=True)


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "my-model").exists():  # the names docs/browse.md uses
        tiny = build_tiny_lm(work / "tiny")
        (work / "my-model").symlink_to(tiny.model_dir.resolve())
        (work / "my-text").symlink_to(tiny.dataset_dir.resolve())
    run = work / "runs" / "tiny-freq-ordered"
    if not (run / "cfg.json").exists():
        sae_lens("train", *TRAIN, "--model_name", "./my-model", "--dataset_path", "./my-text",
                 "--output_path", "runs/tiny-freq-ordered", cwd=work)  # fmt: skip
    sae_lens("browse", "runs/tiny-freq-ordered", "--latents", "0:64", "--overwrite", cwd=work)
    index = run / "browser" / "index.html"
    DOCS.mkdir(parents=True, exist_ok=True)
    executable = find_chromium()
    if executable is None:
        raise SystemExit("headless Chromium not found: apt-get install chromium")
    with Chromium(executable, width=1280, height=760) as page:
        page.open(index)
        page.screenshot(DOCS / "index.png")
        latent = page.evaluate(SELECTIVE)
        page.resize(1280, 1000)
        page.open(run / "browser" / "latents" / f"{latent}.html")
        page.screenshot(DOCS / "latent.png")
    print(json.dumps({"latent": latent, "index": str(DOCS / "index.png")}))


#: The first latent firing on 0.5 % to 20 % of tokens: a selective one reads best.
SELECTIVE = """[...document.querySelectorAll('#latents tbody tr')]
    .filter(r => +r.dataset.freq > 0.005 && +r.dataset.freq < 0.2)
    .map(r => +r.dataset.latent)[0] ?? 0"""


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/browse_screenshots.py WORK_FOLDER")
    main(Path(sys.argv[1]))
