#!/usr/bin/env bash
# Zero-shot top-1 of a checkpoint on assets/independent_shapes: 160 Pillow-drawn pictures of
# one shape each (moved, resized, blurred; see its README.md), over its 16 classes.
#
#   scripts/independent_shapes_accuracy.sh CHECKPOINT [extra `mm-train eval` options]
#   MM_TRAIN=target/release/mm-train scripts/independent_shapes_accuracy.sh runs/tiny_shapes
#
# CHECKPOINT: an mm checkpoint, a run directory (its latest checkpoint) or an HF CLIP
# directory. MM_TRAIN: the mm-train command (default: `cargo run --release -q -p mm-train --`).
# Prints `top-1 XX.XX%` on stdout; eval's full table (top-5, mean per class, linear probe) goes
# to stderr, and its JSON report (per-class top-1) to $EVAL_JSON when that is set. Nothing is
# written beside the checkpoint.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
checkpoint=$(realpath -- "$1")
shift
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
set_dir="$repo/assets/independent_shapes"
read -r -a mm_train <<<"${MM_TRAIN:-cargo run --release -q -p mm-train --}"

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
out="${EVAL_JSON:-$tmp/eval.json}"

# A folder per class: `eval --folder` names the classes after the folders ("red circle", ...),
# so the zero-shot task is exactly these 16 classes. (No --classes: a list given there must be
# in the folders' sorted order, which classes.txt is.)
cd "$repo"
"${mm_train[@]}" eval --checkpoint "$checkpoint" --folder "$set_dir" --out "$out" "$@" \
    >"$tmp/table.txt"
cat "$tmp/table.txt" >&2
top1=$(awk '$1 == "top-1" { print $2; exit }' "$tmp/table.txt")
if [[ -z $top1 ]]; then
    echo "no top-1 in mm-train eval's output" >&2
    exit 1
fi
echo "top-1 $top1"
