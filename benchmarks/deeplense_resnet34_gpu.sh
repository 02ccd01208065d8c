#!/usr/bin/env bash
# ResNet-34 on N simulated DeepLense Model II images (default 25,000), generated on the machine that trains:
# configs/deeplense/resnet34_model_ii.yaml with data.kwargs.n=N. Prints the simulation time, then trains.
#
#   bash benchmarks/deeplense_resnet34_gpu.sh [OUT_DIR]
#
# Environment: N (images, 25000), WORKERS (simulation processes, all CPUs), EPOCHS (300, the config's), and
# BUDGET_S: when set, a 2-epoch probe run times one epoch first and EPOCHS becomes min(EPOCHS, BUDGET_S / epoch),
# so the run fits a time limit; the probe's figures are printed and the epochs actually run are in summary.json.
# The schedule (one-cycle over the epochs run) adapts to the epoch count, so a shortened run is a complete run.
set -euo pipefail
OUT_DIR=${1:-runs/bench-deeplense}
N=${N:-25000}
WORKERS=${WORKERS:-$(nproc)}
EPOCHS=${EPOCHS:-300}
CONFIG=configs/deeplense/resnet34_model_ii.yaml
PY=${PYTHON:-python3}

start=$(date +%s%N)
$PY -m visionbench data simulate-lensing --preset model_ii --n "$N" --seed 0 --workers "$WORKERS"
echo "simulation of $N Model II images with $WORKERS workers: $(( ($(date +%s%N) - start) / 1000000 )) ms wall"

if [ -n "${BUDGET_S:-}" ]; then
  $PY -m visionbench train "$CONFIG" --set data.kwargs.n="$N" --set trainer.epochs=2 \
    --set trainer.out_dir="$OUT_DIR/probe" --set trainer.progress=lines
  EPOCHS=$($PY - "$OUT_DIR/probe" "$BUDGET_S" "$EPOCHS" <<'EOF'
import json, pathlib, sys
summary = json.loads(next(pathlib.Path(sys.argv[1]).glob("*/*/summary.json")).read_text())
seconds = summary["seconds"]
per_epoch = seconds["train"] / summary["epochs_completed"]
fit = int(float(sys.argv[2]) // per_epoch)
print(f"probe: data {seconds['data']:.1f}s, train {seconds['train']:.1f}s for 2 epochs ({per_epoch:.2f}s/epoch), "
      f"eval {seconds['eval']:.1f}s; {fit} epochs fit {sys.argv[2]}s", file=sys.stderr)
print(max(2, min(int(sys.argv[3]), fit)))
EOF
)
fi
echo "training $EPOCHS epochs"
$PY -m visionbench train "$CONFIG" --set data.kwargs.n="$N" --set trainer.epochs="$EPOCHS" \
  --set trainer.out_dir="$OUT_DIR" --set trainer.progress=lines
