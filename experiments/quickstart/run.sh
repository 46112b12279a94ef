#!/usr/bin/env bash
# Trains every config in experiments/quickstart/configs/ (or the ones named) with the release
# binary, one after another, then plots held-out zero-shot top-1 against samples seen and
# against wall-clock time. Run from anywhere; results go to runs/quickstart/NAME.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p mm-train
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for c in experiments/quickstart/configs/*.toml; do names+=("$(basename "$c" .toml)"); done
fi
for name in "${names[@]}"; do
  rm -rf "runs/quickstart/$name"
  echo "== $name"
  target/release/mm-train --config "experiments/quickstart/configs/$name.toml" --no-progress \
    2>&1 | grep -E "held-out|done:" || true
done
python3 -c "import matplotlib" 2>/dev/null || pip install --quiet matplotlib
python3 experiments/quickstart/plot.py runs/quickstart experiments/quickstart/plot.png
