#!/usr/bin/env bash
# Reproduce docs/report.md: build the tiny local models, run the sweeps, draw
# the figures, copy the figures and tables into docs/report/. Offline; runs/report/ keeps
# every run folder. Measured for the report on 2 CPU cores shared with other jobs: 11, 15
# and 13 minutes for the synthetic studies, 28 to train the tiny model's ladder, then about
# half a minute per variant for SAE-Bench on an idle core. Finished variants are skipped
# (`sae-lens sweep` skips them), so an interrupted script can be rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
SAE=.venv/bin/sae-lens
[ -d runs/tiny ] || .venv/bin/python scripts/build_tiny_world.py runs/tiny

run() {  # sweep file, output folder
    $SAE sweep "$1" -o "$2" --progress none
    $SAE compare "$2" -o "$2/figures"
}
run sweeps/ordering-ladder.yaml runs/report/ordering-ladder
run sweeps/temporal-grid.yaml runs/report/temporal-grid
run docs/report/seeds.yaml runs/report/seeds
run docs/report/ordering-ladder-tiny.yaml runs/report/ordering-ladder-tiny

copy() {  # study, files...
    local study=$1; shift
    mkdir -p "docs/report/$study"
    for f in "$@"; do
        mkdir -p "docs/report/$study/$(dirname "$f")"
        cp "runs/report/$study/figures/$f" "docs/report/$study/$f"
    done
}
copy ordering-ladder training_loss_comparison.png metrics_comparison.png \
    training_curves.png all_metrics.png baseline/frequency_ordering.png \
    warm-up/frequency_ordering.png
copy temporal-grid metrics_comparison.png training_curves.png all_metrics.png
copy seeds seed_consistency.md
copy ordering-ladder-tiny training_loss_comparison.png reconstruction_metrics.png \
    metrics_comparison.png absorption_metrics.png scr_threshold_comparison.png \
    training_curves.png baseline/feature_frequencies.png warm-up/frequency_ordering.png
for study in ordering-ladder temporal-grid seeds ordering-ladder-tiny; do
    cp "runs/report/$study/figures/results.md" "runs/report/$study/figures/results.csv" \
        "docs/report/$study/"
done
echo "report files in docs/report/"
