#!/usr/bin/env bash
# Every fusion operator x stage, plus image-only and text-only, on both built-in tasks, three
# seeds each: a classifier on the quick-start CLIP's towers (trained first, into
# runs/fusion/clip). Each finished run appends one line to results.jsonl (kept in git), and a
# run already there is skipped, so the grid can be run over several sessions:
#   bash experiments/fusion-strategies/run.sh                       # all of it, one run at a time
#   bash experiments/fusion-strategies/run.sh --jobs 2 --until 3600 # two at a time; start none after an hour
# Then plot.py writes results.md and plot.png. Runs use one compute thread each
# (RAYON_NUM_THREADS=1), so their train times compare.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=experiments/fusion-strategies
jobs=1 until=0
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs=$2; shift 2 ;;
    --until) until=$2; shift 2 ;;
    *) echo "unknown argument $1 (--jobs N, --until SECONDS)"; exit 2 ;;
  esac
done
start=$(date +%s)
cargo build --release -p mm-train
bin="${CARGO_TARGET_DIR:-target}/release/mm-train"
export RAYON_NUM_THREADS=1
if [ ! -f runs/fusion/clip/checkpoints/latest ]; then
  rm -rf runs/fusion/clip
  RAYON_NUM_THREADS=2 "$bin" --config configs/tiny_shapes.toml --no-progress --output-dir runs/fusion/clip
fi
touch "$here/results.jsonl"
mkdir -p runs/fusion/.claims
variants=()
for stage in late mid early; do
  for operator in sum concat product gated attention; do variants+=("$stage/$operator/both"); done
done
variants+=("mid/concat/image" "mid/concat/text")

# Claims a run for this worker: a directory only one process can create; a claim whose process
# is gone (killed) is taken over.
claim() {
  local dir="runs/fusion/.claims/${1//\//_}"
  if mkdir "$dir" 2>/dev/null; then echo $$ > "$dir/pid"; return 0; fi
  local pid; pid=$(cat "$dir/pid" 2>/dev/null || echo 0)
  if [ "$pid" != 0 ] && ! kill -0 "$pid" 2>/dev/null; then echo $$ > "$dir/pid"; return 0; fi
  return 1
}

worker() {
  for seed in 1 2 3; do
    for task in matching question; do
      for variant in "${variants[@]}"; do
        IFS=/ read -r stage operator modalities <<<"$variant"
        name="$task/$stage-$operator-$modalities/seed$seed"
        grep -q "\"name\": \"$name\"" "$here/results.jsonl" && continue
        if [ "$until" -gt 0 ] && [ $(( $(date +%s) - start )) -gt "$until" ]; then
          echo "stopping: --until $until seconds reached"; return 0
        fi
        claim "$name" || continue
        out="runs/fusion/$name"
        rm -rf "$out"
        echo "== $name"
        "$bin" --config "$here/configs/$task.toml" --no-progress --output-dir "$out" \
          --set "seed=$seed" --set "fusion.stage=\"$stage\"" --set "fusion.operator=\"$operator\"" \
          --set "fusion.modalities=\"$modalities\"" 2>&1 | grep -E "^training|done:" || true
        python3 "$here/collect.py" "$name" "$out" >> "$here/results.jsonl"
      done
    done
  done
}

for _ in $(seq "$jobs"); do worker & done
wait
# Claims stay: another invocation may still be running; a dead worker's claim is taken over.
python3 -c "import matplotlib" 2>/dev/null || pip install --quiet matplotlib
python3 "$here/plot.py" "$here"
