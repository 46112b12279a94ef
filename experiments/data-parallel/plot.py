"""Tables (results.md) and plot (plot.png) of experiments/data-parallel from the runs'
metrics.jsonl and final checkpoints. Usage: plot.py RUNS_DIR OUT_DIR"""

import json
import struct
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

runs, out = Path(sys.argv[1]), Path(sys.argv[2])

EQUIVALENCE = [
    ("eq-1x64", "1 rank x 64"),
    ("eq-2x32", "2 ranks x 32"),
    ("eq-4x16", "4 ranks x 16"),
    ("eq-2x32-local", "2 ranks x 32, local_loss"),
    ("eq-1x16", "1 rank x 16 (one rank's batch alone)"),
]
SCALING = [("scale-1", 1), ("scale-2", 2), ("scale-4", 4)]


def records(name):
    path = runs / name / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(name):
    return {r["step"]: r["loss"] for r in records(name) if "loss" in r}


def evals(name):
    return {r["step"]: r["eval"] for r in records(name) if "eval" in r}


def weights(name):
    """The final checkpoint's tensors (safetensors read by hand: no extra package)."""
    ckpts = sorted((runs / name / "checkpoints").glob("step-*"))
    if not ckpts:
        return None
    data = (ckpts[-1] / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensors[key] = np.frombuffer(body[start:end], dtype=np.float32)
    return tensors


lines = ["# Results", ""]
reference = losses("eq-1x64")
ref_weights = weights("eq-1x64")
if reference:
    lines += [
        "## Equivalence: global batch 64 however it is split (300 steps, tiny model, shapes)",
        "",
        "| run | final loss | max abs loss difference from 1 x 64 (all logged steps) | weights: max abs difference / max abs weight | zero-shot top-1 at 100 / 200 / 300 |",
        "|---|---|---|---|---|",
    ]
    for name, label in EQUIVALENCE:
        curve = losses(name)
        if not curve:
            continue
        steps = sorted(set(curve) & set(reference))
        diff = max(abs(curve[s] - reference[s]) for s in steps)
        w = weights(name)
        if w is not None and ref_weights is not None:
            worst = max(float(np.abs(w[k] - ref_weights[k]).max()) for k in w)
            scale = max(float(np.abs(ref_weights[k]).max()) for k in w)
            wdiff = f"{worst / scale:.1e}"
        else:
            wdiff = "-"
        top1 = " / ".join(
            f"{100 * e['shapes/top1']:.1f}%" for _, e in sorted(evals(name).items())
        )
        last = curve[max(curve)]
        lines.append(f"| {label} | {last:.4f} | {diff:.1e} | {wdiff} | {top1} |")
    lines.append("")

scaling = [(name, ranks, records(name)) for name, ranks in SCALING if records(name)]
if scaling:
    lines += [
        "## Throughput on this machine (global batch 64, 60 steps)",
        "",
        "| ranks | batch per rank | samples/s | step time | communication per step | share of the step |",
        "|---|---|---|---|---|---|",
    ]
    for name, ranks, recs in scaling:
        # Steady state: the logged steps after the first 10.
        steady = [r for r in recs if "samples_per_sec" in r and r["step"] > 10]
        sps = steady[-1]["samples_per_sec"]
        step_ms = 1e3 * 64 / sps
        comm = [r.get("comm_ms", 0.0) for r in steady]
        comm_ms = sum(comm) / len(comm)
        lines.append(
            f"| {ranks} | {64 // ranks} | {sps:.1f} | {step_ms:.0f} ms | {comm_ms:.1f} ms | {100 * comm_ms / step_ms:.1f}% |"
        )
    lines.append("")
(out / "results.md").write_text("\n".join(lines))
print("\n".join(lines))

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for name, label in EQUIVALENCE:
    curve = losses(name)
    if curve:
        steps = sorted(curve)
        style = ":" if "1x16" in name else "-"
        axes[0].plot(steps, [curve[s] for s in steps], style, label=label, alpha=0.8)
axes[0].set_xlabel("step")
axes[0].set_ylabel("training loss (global batch)")
axes[0].set_title("Same global batch, any split: one curve")
axes[0].legend(fontsize=8)
if scaling:
    ranks = [r for _, r, _ in scaling]
    totals, comms = [], []
    for _, _, recs in scaling:
        steady = [r for r in recs if "samples_per_sec" in r and r["step"] > 10]
        step_ms = 1e3 * 64 / steady[-1]["samples_per_sec"]
        comm_ms = sum(r.get("comm_ms", 0.0) for r in steady) / len(steady)
        totals.append(step_ms - comm_ms)
        comms.append(comm_ms)
    x = np.arange(len(ranks))
    axes[1].bar(x, totals, label="compute")
    axes[1].bar(x, comms, bottom=totals, label="communication (incl. waiting)")
    axes[1].set_xticks(x, [f"{r} rank(s)" for r in ranks])
    axes[1].set_ylabel("ms per step (global batch 64)")
    axes[1].set_title("One 2-core machine: ranks share the cores")
    axes[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "plot.png", dpi=110)
