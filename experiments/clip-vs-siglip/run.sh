#!/usr/bin/env bash
# Trains the tiny model with each objective (clip, siglip) at each batch size (16, 64, and 256
# as 64 x accum_freq 4) on each data set (shapes, shards), one run after another, then writes
# the table (results.md) and the plot (plot.png). Runs go to runs/clip-vs-siglip/DATA-OBJ-bN.
# Arguments: data sets to run (default: shapes shards).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p mm-train
datasets=("$@")
[ ${#datasets[@]} -eq 0 ] && datasets=(shapes shards)
for data in "${datasets[@]}"; do
  for objective in clip siglip; do
    for batch in 16 64 256; do
      case $batch in
        256) sizes=(--set train.batch_size=64 --set train.accum_freq=4) ;;
        *) sizes=(--set "train.batch_size=$batch") ;;
      esac
      name="$data-$objective-b$batch"
      rm -rf "runs/clip-vs-siglip/$name"
      echo "== $name"
      target/release/mm-train --config "experiments/clip-vs-siglip/configs/$data.toml" \
        --no-progress --output-dir "runs/clip-vs-siglip/$name" \
        --set "objective=\"$objective\"" "${sizes[@]}" 2>&1 | grep -E "step 600:|done:" || true
    done
  done
done
python3 -c "import matplotlib" 2>/dev/null || pip install --quiet matplotlib
python3 experiments/clip-vs-siglip/plot.py runs/clip-vs-siglip experiments/clip-vs-siglip
