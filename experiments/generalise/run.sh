#!/usr/bin/env bash
# Trains the configs of experiments/generalise/configs/ (or the ones named) with the release
# binary, one after another, into runs/generalise/NAME, then plots held-out and independent
# zero-shot top-1 against steps (plot.png). Every config measures both as eval suites: the
# built-in held-out split (drawn as its training data) and assets/independent_shapes (160
# pictures Pillow drew: scripts/make_independent_shapes.py). Run from anywhere.
#
# The data-only variants of the table (patches/geometry-env.patch) need that patch applied:
#   git apply experiments/generalise/patches/geometry-env.patch   # on commit d67eb9b
#   MM_SHAPES_RMIN=0.15 MM_SHAPES_RMAX=0.40 MM_SHAPES_SHIFT=fit \
#       target/release/mm-train --config configs/tiny_shapes.toml --output-dir runs/generalise/v1
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p mm-train
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for c in experiments/generalise/configs/*.toml; do names+=("$(basename "$c" .toml)"); done
fi
for name in "${names[@]}"; do
  rm -rf "runs/generalise/$name"
  echo "== $name"
  target/release/mm-train --config "experiments/generalise/configs/$name.toml" --no-progress \
    2>&1 | grep -E "top-1|done:" || true
done
python3 -c "import matplotlib" 2>/dev/null || pip install --quiet matplotlib
python3 experiments/generalise/plot.py runs/generalise experiments/generalise/plot.png
