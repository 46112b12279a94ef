"""Held-out zero-shot top-1 against samples seen for the runs of this experiment:
python3 plot.py RUNS OUT.png  (RUNS holds one directory per run, as run.sh leaves them)."""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Left: knobs turned on the original data. Right: the data's difficulty.
KNOBS = ["long", "lr1e-3", "px64", "p4s32", "p6s48", "p16", "b256", "scale100", "bf16",
         "plain_captions", "colour_runs"]
DATA = ["long", "shift12_sizes", "centred_sizes", "mild", "centred", "final"]


def curve(run: pathlib.Path):
    """(samples seen, top-1 %) at each evaluation, and the run's mean samples/s."""
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    # train.log's first line: "training N parameters (...) on flex for S steps of B (...)".
    first = (run / "train.log").read_text().splitlines()[0]
    batch = int(first.split(" steps of ")[1].split()[0])
    rates = [r["samples_per_sec"] for r in records if "samples_per_sec" in r]
    # Runs before eval suites logged "zero_shot_top1"; now it is "shapes/top1" under "eval".
    top1 = [(r["step"], r.get("eval", {}).get("shapes/top1", r.get("zero_shot_top1"))) for r in records]
    points = [(step * batch / 1000, 100 * v) for step, v in top1 if v is not None]
    return points, sum(rates) / max(len(rates), 1)


def main(runs: str, out: str) -> None:
    runs = pathlib.Path(runs)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax in axes:
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for ax, names, title in [(axes[0], KNOBS, "training knobs, original data"),
                             (axes[1], DATA, "the data's difficulty")]:
        for name in names:
            if not (runs / name / "metrics.jsonl").exists():
                continue
            points, rate = curve(runs / name)
            if points:
                x, y = zip(*points)
                ax.plot(x, y, marker="o", markersize=3, label=name,
                        linewidth=2.5 if name == "final" else 1.2)
            if name == "final":
                ax.axvline(300 * rate / 1000, color="grey", linestyle=":", linewidth=1)
                ax.text(300 * rate / 1000, 5, " 5 min", color="grey")
        ax.axhline(80, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("samples seen (thousands)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out zero-shot top-1 (%), 48 classes")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
