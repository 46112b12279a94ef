"""results.jsonl -> results.md (mean ± std over seeds per task and variant) and plot.png."""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

here = Path(sys.argv[1])
runs = [json.loads(l) for l in (here / "results.jsonl").read_text().splitlines() if l.strip()]
groups = defaultdict(list)
for r in runs:
    variant = (r["stage"], r["operator"], r["modalities"])
    groups[(r["task"], variant)].append(r)

stages, operators = ["late", "mid", "early"], ["sum", "concat", "product", "gated", "attention"]
variants = [(s, o, "both") for s in stages for o in operators]
variants += [("mid", "concat", "image"), ("mid", "concat", "text")]
tasks = ["matching", "question"]
chance = {"matching": 0.5, "question": 1 / 14}


def label(v):
    stage, operator, modalities = v
    return {"image": "image only", "text": "text only"}.get(modalities, f"{stage} {operator}")


def cell(task, v, key="accuracy", scale=100.0, fmt="{:.1f} ± {:.1f}"):
    rs = groups.get((task, v), [])
    if not rs:
        return "–", None
    values = [r[key] * scale for r in rs]
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return fmt.format(mean, std) + ("" if len(rs) == 3 else f" ({len(rs)} seed{'s' * (len(rs) > 1)})"), mean


lines = [
    "| fusion | matching accuracy % | question accuracy % | matching macro-F1 | question macro-F1 | fusion parameters (+ towers) | train s (matching) |",
    "|---|---|---|---|---|---|---|",
]
for v in variants:
    acc = [cell(t, v)[0] for t in tasks]
    f1 = [cell(t, v, "macro_f1", 1.0, "{:.3f} ± {:.3f}")[0] for t in tasks]
    rs = groups.get(("matching", v), []) or groups.get(("question", v), [])
    params = f"{rs[0]['fusion_parameters']:,}" if rs else "–"
    secs = cell("matching", v, "train_seconds", 1.0, "{:.0f} ± {:.0f}")[0]
    lines.append(f"| {label(v)} | {acc[0]} | {acc[1]} | {f1[0]} | {f1[1]} | {params} | {secs} |")
lines.append("")
towers = {r["parameters"] - r["fusion_parameters"] for r in runs}
lines.append(
    f"Chance: matching 50%, question {100 / 14:.1f}% (14 answers). Every classifier also has the "
    f"towers' {', '.join(f'{t:,}' for t in sorted(towers))} parameters (fine-tuned at half the rate)."
)
(here / "results.md").write_text("\n".join(lines) + "\n")

fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=False)
for ax, task in zip(axes, tasks):
    names, means, stds = [], [], []
    for v in variants:
        rs = groups.get((task, v), [])
        if not rs:
            continue
        values = [100 * r["accuracy"] for r in rs]
        names.append(label(v))
        means.append(statistics.mean(values))
        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    colors = ["tab:gray" if "only" in n else "tab:blue" for n in names]
    ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
    ax.axhline(100 * chance[task], color="tab:red", linestyle="--", label="chance")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("held-out accuracy %")
    ax.set_title(f"{task} task (mean ± std over seeds)")
    ax.legend()
fig.tight_layout()
fig.savefig(here / "plot.png", dpi=110)
print(f"wrote {here / 'results.md'} and {here / 'plot.png'} from {len(runs)} runs")
