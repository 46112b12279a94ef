"""One finished run as a results.jsonl line: task metrics, parameters, train time."""
import json
import re
import sys
from pathlib import Path

name, run = sys.argv[1], Path(sys.argv[2])
latest = (run / "checkpoints" / "latest").read_text().strip()
state = json.loads((run / "checkpoints" / latest / "state.json").read_text())
log = (run / "train.log").read_text()
params = int(re.search(r"training (\d+) parameters", log).group(1))
# The towers' own count, from the run that trained them: the rest is the fusion classifier's.
clip_log = (run.parents[2] / "clip" / "train.log").read_text()
clip_params = int(re.search(r"training (\d+) parameters", clip_log).group(1))
seconds = float(re.search(r"done: \d+ steps in (\d+)s", log).group(1))
task, variant, seed = name.split("/")
stage, operator, modalities = variant.split("-")
print(json.dumps({
    "name": name, "task": task, "stage": stage, "operator": operator,
    "modalities": modalities, "seed": int(seed.removeprefix("seed")),
    "step": state["step"], "accuracy": state["eval"]["task/accuracy"],
    "macro_f1": state["eval"]["task/macro_f1"], "parameters": params,
    "fusion_parameters": params - clip_params,
    "train_seconds": seconds,
}))
