#!/usr/bin/env python3
"""Reads a run directory's TensorBoard event files with TensorBoard's own reader and prints
every scalar series (tag, points, first and last values); exits 1 if none are found. Checks
that `tensorboard --logdir RUN_DIR` will show what mm-train wrote.

    pip install tensorboard
    python scripts/read_tensorboard.py runs/tiny_shapes [TAG ...]

With TAGs, also fails unless each of them is present.
"""
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(run_dir, required):
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in sorted(tags):
        points = events.Scalars(tag)
        print(f"{tag:32} {len(points):5} points  step {points[0].step}..{points[-1].step}  "
              f"{points[0].value:.4g} -> {points[-1].value:.4g}")
    missing = [t for t in required if t not in tags]
    if not tags or missing:
        print(f"missing: {missing or 'every scalar'}")
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
