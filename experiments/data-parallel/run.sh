#!/usr/bin/env bash
# Trains the runs of experiments/data-parallel (README.md) one after another, then writes the
# tables (results.md, paper.md) and the plot (plot.png). Runs go to runs/data-parallel/NAME.
# Arguments: parts to run (default: equivalence scaling).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/ensure_mpi.sh
cargo build --release -p mm-train --features mpi
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(equivalence scaling)
bin=target/release/mm-train
exp=experiments/data-parallel

# train NAME RANKS CONFIG [--set ...]: one run, under mpiexec when RANKS > 1.
train() {
  local name=$1 ranks=$2 config=$3
  shift 3
  rm -rf "runs/data-parallel/$name"
  echo "== $name ($ranks rank(s))"
  local launch=()
  [ "$ranks" -gt 1 ] && launch=(mpiexec -n "$ranks")
  "${launch[@]}" "$bin" --config "$exp/configs/$config.toml" --no-progress \
    --output-dir "runs/data-parallel/$name" "$@" 2>&1 | grep -E "done:" || true
}

for part in "${parts[@]}"; do
  case $part in
    equivalence)
      train eq-1x64 1 equivalence
      train eq-2x32 2 equivalence --set train.batch_size=32
      train eq-4x16 4 equivalence --set train.batch_size=16
      train eq-2x32-local 2 equivalence --set train.batch_size=32 --set train.local_loss=true
      train eq-1x16 1 equivalence --set train.batch_size=16
      ;;
    scaling)
      for ranks in 1 2 4; do
        train "scale-$ranks" "$ranks" scaling --set "train.batch_size=$((64 / ranks))"
      done
      ;;
  esac
done
python3 -c "import matplotlib" 2>/dev/null || pip install --quiet matplotlib
python3 $exp/plot.py runs/data-parallel $exp
python3 $exp/paper.py > $exp/paper.md
