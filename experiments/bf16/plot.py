"""Table and plot of the bf16 runs: python3 plot.py RUNS OUT_DIR (RUNS holds fp32, bf16 and
bf16-patch-dropout as run.sh leaves them; writes OUT_DIR/results.md and OUT_DIR/plot.png)."""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RUNS = [("fp32", "fp32"), ("bf16", "bf16"), ("bf16-patch-dropout", "bf16 + patch_dropout 0.5")]


def records(run: pathlib.Path):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]


def main():
    runs, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(11, 4))
    rows = []
    for name, label in RUNS:
        recs = records(runs / name)
        train = [r for r in recs if "loss" in r]
        evals = [(r["step"], r["eval"]["shapes/top1"]) for r in recs if "eval" in r]
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        loss_ax.plot(steps, losses, label=label, linewidth=1)
        top1_ax.plot([s for s, _ in evals], [100 * t for _, t in evals], marker="o", label=label)
        rate = sorted(r["samples_per_sec"] for r in train)[len(train) // 2]
        last = [l for s, l in zip(steps, losses) if s > 900]
        at = {s: t for s, t in evals}
        rows.append(
            f"| {label} | {sum(last) / len(last):.4f} | "
            + " / ".join(f"{100 * at[s]:.1f}%" for s in (200, 400, 600, 800, 1000) if s in at)
            + f" | {rate:.0f} |"
        )
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    top1_ax.set(xlabel="step", ylabel="held-out zero-shot top-1 (%)", title="48 classes, 960 pictures")
    for ax in (loss_ax, top1_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=120)
    table = [
        "| run | mean training loss, steps 910-1000 | held-out zero-shot top-1 at step 200 / 400 / 600 / 800 / 1000 | median samples/s in train steps |",
        "|---|---|---|---|",
        *rows,
    ]
    (out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
