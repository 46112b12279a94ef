"""Reference values for mm's caption metrics (BLEU-1..4, CIDEr-D) from pycocoevalcap, the
COCO caption evaluation every captioning paper reports.

    benches/.venv/bin/pip install pycocoevalcap==1.2
    benches/.venv/bin/python scripts/make_caption_metric_fixtures.py

Writes fixtures/caption_metrics/pycocoevalcap.json: corpora of (candidate, references) with
pycocoevalcap's corpus BLEU-1..4 and CIDEr-D (mean and per image). Texts are lowercase words
joined by single spaces: what pycocoevalcap's PTB tokenizer would hand its scorers.
"""

import json
import random

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

WORDS = (
    "a an the photo picture drawing image of red green blue yellow purple orange black white "
    "circle square triangle star hexagon cross on background in middle with that is coloured"
).split()


def sentence(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def perturbed(rng, text):
    words = text.split()
    out = []
    for w in words:
        r = rng.random()
        if r < 0.15:
            continue
        if r < 0.3:
            out.append(rng.choice(WORDS))
        else:
            out.append(w)
    return " ".join(out)


def corpus(seed, images, refs_per_image, empty_candidates=False):
    rng = random.Random(seed)
    cases = []
    for i in range(images):
        refs = [sentence(rng, 3, 12) for _ in range(rng.randint(1, refs_per_image))]
        if empty_candidates and i % 5 == 0:
            cand = ""
        elif i % 4 == 0:
            cand = refs[0]
        elif i % 4 == 1:
            cand = sentence(rng, 1, 3)
        else:
            cand = perturbed(rng, rng.choice(refs))
        cases.append({"candidate": cand, "references": refs})
    return cases


def score(cases):
    gts = {i: c["references"] for i, c in enumerate(cases)}
    res = {i: [c["candidate"]] for i, c in enumerate(cases)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, per_image = Cider().compute_score(gts, res)
    return {
        "bleu": [float(b) for b in bleu],
        "cider_d": float(cider),
        "cider_d_per_image": [float(x) for x in per_image],
    }


corpora = []
for name, seed, images, refs, empty in [
    ("small", 1, 6, 3, False),
    ("many_references", 2, 40, 10, False),
    ("with_empty_candidates", 3, 25, 5, True),
    ("single_reference", 4, 30, 1, False),
]:
    cases = corpus(seed, images, refs, empty)
    corpora.append({"name": name, "cases": cases, **score(cases)})

with open("fixtures/caption_metrics/pycocoevalcap.json", "w") as f:
    json.dump({"source": "pycocoevalcap 1.2", "corpora": corpora}, f, indent=1)
    f.write("\n")
print("wrote fixtures/caption_metrics/pycocoevalcap.json")
