"""Held-out and independent zero-shot top-1 against steps for the runs of this experiment:
python3 plot.py RUNS OUT.png  (RUNS holds one directory per run, as run.sh leaves them)."""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RUNS = {
    "final": "conv stem, shapes anywhere (the quick start, seed 42)",
    "seed1": "the same, seed 1",
    "stem_1000": "the same, 1000 steps",
    "plain_anywhere": "no stem (plain patch-8 ViT), shapes anywhere",
    "stem_centred": "conv stem, shapes centred (as before)",
}


def curves(run: pathlib.Path):
    """{metric: [(step, top-1 %)]} for the two suites."""
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    out = {"shapes/top1": [], "independent/top1": []}
    for r in records:
        for key, points in out.items():
            value = r.get("eval", {}).get(key)
            if value is not None:
                points.append((r["step"], 100 * value))
    return out


def main(runs: str, out: str) -> None:
    runs = pathlib.Path(runs)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    titles = {"independent/top1": "independent set (Pillow, 16 classes; chance 6.2%)",
              "shapes/top1": "built-in held-out split (48 classes; chance 2.1%)"}
    for ax, key in zip(axes, ["independent/top1", "shapes/top1"]):
        for name, label in RUNS.items():
            if not (runs / name / "metrics.jsonl").exists():
                continue
            points = curves(runs / name)[key]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.axhline(80, color="grey", lw=0.8, ls="--")
        ax.set_title(titles[key])
        ax.set_xlabel("step (batch 64)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("zero-shot top-1 (%)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
