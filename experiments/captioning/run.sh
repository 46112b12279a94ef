#!/usr/bin/env bash
# experiments/captioning (see README.md): per seed, the tiny CoCa on the built-in shapes data,
# the same model trained by the contrastive loss alone (caption weight 0), both decodings of
# the CoCa's final checkpoint (`mm-train eval`, greedy and beam 4), and the CoCa fine-tuned on
# the built-in questions; then the table (results.md) and plot (plot.png). Runs go to
# runs/captioning/{coca,clip_only,vqa}/seedN. Arguments: seeds (default: 1 2). About 75
# minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
# MM_TRAIN: an mm-train binary already built (default: build one).
B=${MM_TRAIN:-target/release/mm-train}
[ -n "${MM_TRAIN:-}" ] || cargo build --release -p mm-train
C=experiments/captioning/configs
R=runs/captioning
seeds=("$@")
[ ${#seeds[@]} -eq 0 ] && seeds=(1 2)
train() { # NAME SEED CONFIG ARGS...
  local name=$1 seed=$2 config=$3
  shift 3
  rm -rf "$R/$name/seed$seed"
  echo "== $name seed $seed"
  "$B" --config "$config" --no-progress --seed "$seed" --output-dir "$R/$name/seed$seed" "$@" \
    2>&1 | grep --line-buffered -E "step [0-9]+: (captions|answers)|done:" || true
}
for seed in "${seeds[@]}"; do
  train coca "$seed" "$C/coca.toml"
  train clip_only "$seed" "$C/coca.toml" --set coca.caption_loss_weight=0
  for beams in 1 4; do
    "$B" eval --checkpoint "$R/coca/seed$seed" --samples 480 --beams "$beams" \
      --out "$R/coca/seed$seed/eval_beams$beams.json" | grep -A3 "captions ("
  done
  train vqa "$seed" "$C/vqa.toml" --set "init_from=\"$R/coca/seed$seed\""
done
python3 -c "import matplotlib" 2>/dev/null || pip install --quiet matplotlib
python3 experiments/captioning/plot.py "$R" experiments/captioning
