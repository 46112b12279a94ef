"""Plot and table of the clip-vs-siglip runs:
python3 plot.py RUNS OUT_DIR  (RUNS holds DATA-OBJECTIVE-bBATCH directories, as run.sh leaves
them; writes OUT_DIR/plot.png and OUT_DIR/results.md)."""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Per data set: the zero-shot metric and the retrieval suite's prefix.
DATA = {
    "shapes": ("shapes/top1", "shapes", "built-in shapes (960 held-out pictures)"),
    "shards": ("labelled/top1", "val", "assets/shards (96 labelled, 100 held-out pairs)"),
}
OBJECTIVES = ["clip", "siglip"]
BATCHES = [16, 64, 256]
COLOURS = {16: "tab:blue", 64: "tab:orange", 256: "tab:green"}


def evals(run: pathlib.Path):
    """[(step, {metric: value})] of a run's evaluations."""
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [(r["step"], r["eval"]) for r in records if "eval" in r]


def retrieval(metrics: dict, suite: str) -> float:
    """Mean of image->text and text->image R@1."""
    return (metrics[f"{suite}/image_to_text_r1"] + metrics[f"{suite}/text_to_image_r1"]) / 2


def main(runs: str, out: str) -> None:
    runs, out = pathlib.Path(runs), pathlib.Path(out)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    rows = ["| data | objective | batch | zero-shot top-1 | retrieval R@1 (mean of both ways) | best top-1 (step) |",
            "|---|---|---|---|---|---|"]
    for row, (data, (top1_key, suite, title)) in enumerate(DATA.items()):
        for objective in OBJECTIVES:
            for batch in BATCHES:
                run = runs / f"{data}-{objective}-b{batch}"
                if not (run / "metrics.jsonl").exists():
                    continue
                points = evals(run)
                steps = [s for s, _ in points]
                style = dict(color=COLOURS[batch], linestyle="-" if objective == "clip" else "--",
                             marker="o" if objective == "clip" else "s", markersize=3,
                             label=f"{objective}, batch {batch}")
                axes[row][0].plot(steps, [100 * m[top1_key] for _, m in points], **style)
                axes[row][1].plot(steps, [100 * retrieval(m, suite) for _, m in points], **style)
                last = points[-1][1]
                best_step, best = max(((s, m[top1_key]) for s, m in points), key=lambda p: p[1])
                rows.append(f"| {data} | {objective} | {batch} | {100 * last[top1_key]:.1f}% | "
                            f"{100 * retrieval(last, suite):.1f}% | {100 * best:.1f}% ({best_step}) |")
        axes[row][0].set_title(f"{title}: zero-shot top-1 (48 classes)")
        axes[row][1].set_title(f"{title}: retrieval R@1")
        for ax in axes[row]:
            ax.set_xlabel("step")
            ax.set_ylabel("%")
            ax.grid(alpha=0.3)
        axes[row][0].axhline(100 / 48, color="grey", linewidth=0.8, linestyle=":")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("CLIP (solid) vs SigLIP (dashed), tiny model, 600 steps; 256 = 64 x accum_freq 4")
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=110)
    (out / "results.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
