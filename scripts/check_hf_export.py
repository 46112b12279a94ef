#!/usr/bin/env python3
"""Loads a directory written by `mm-train export-hf` with transformers and checks that it gives
the logits recorded for the fixture it came from.

    cargo run --release -p mm-train -- import-hf fixtures/hf/quick_gelu_legacy_eos --out /tmp/ckpt
    cargo run --release -p mm-train -- export-hf /tmp/ckpt --out /tmp/exported
    python scripts/check_hf_export.py /tmp/exported fixtures/hf/quick_gelu_legacy_eos.reference.safetensors

Needs torch, transformers, safetensors and pillow (see scripts/make_hf_fixtures.py).
"""
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent


def main(exported, reference_file):
    reference = load_file(reference_file)
    with safe_open(reference_file, "pt") as f:
        meta = f.metadata()
    model = CLIPModel.from_pretrained(exported).eval()
    tokenizer = CLIPTokenizer.from_pretrained(exported)
    processor = CLIPImageProcessorPil.from_pretrained(exported)

    with torch.no_grad():
        # 1. The recorded inputs: the exported weights compute the recorded logits.
        out = model(input_ids=reference["input_ids"], pixel_values=reference["pixel_values"])
        err = (out.logits_per_image - reference["logits_per_image"]).abs().max().item()
        print(f"logits_per_image from recorded inputs: max |exported - reference| = {err:.3e}")
        # 2. The exported tokenizer and image processor reproduce the recorded inputs.
        captions = json.loads(meta["captions"])
        ids = tokenizer(captions, padding="max_length", truncation=True,
                        max_length=model.config.text_config.max_position_embeddings,
                        return_tensors="pt")["input_ids"]
        same_ids = torch.equal(ids, reference["input_ids"][: len(captions)])
        images = [Image.open(ROOT / "fixtures/hf/images" / f"{name}.png") for name in json.loads(meta["images"])]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        pixel_err = (pixels - reference["pixel_values"]).abs().max().item()
        print(f"tokenizer ids equal: {same_ids}; pixel_values max diff {pixel_err:.3e}")
    ok = err <= 1e-6 and same_ids and pixel_err <= 1e-6
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
