#!/usr/bin/env bash
# Trains the quick-start model three ways from the same seed: fp32, bf16 (bf16 GEMMs with f32
# sums, fp32 master weights), and bf16 with patch_dropout = 0.5; then writes results.md and
# plot.png. Runs go to runs/bf16/NAME. About 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p mm-train
bin="${CARGO_TARGET_DIR:-target}/release/mm-train"
run() {
  local name=$1; shift
  rm -rf "runs/bf16/$name"
  echo "== $name"
  "$bin" --config experiments/bf16/configs/tiny.toml --no-progress --output-dir "runs/bf16/$name" "$@" \
    2>&1 | grep -E "step 1000:|done:" || true
}
run fp32
run bf16 --set 'train.precision="bf16"'
run bf16-patch-dropout --set 'train.precision="bf16"' --set train.patch_dropout=0.5
python3 -c "import matplotlib" 2>/dev/null || pip install --quiet matplotlib
python3 experiments/bf16/plot.py runs/bf16 experiments/bf16
