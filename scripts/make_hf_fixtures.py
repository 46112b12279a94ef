#!/usr/bin/env python3
"""Builds the Hugging Face CLIP reference fixtures under `fixtures/hf/` that mm's tests compare
against (no network at test time, nothing downloaded: the models are random-initialised here).

Run once by hand, from the repo root, with CPU torch and transformers from PyPI:
    pip install torch torchvision transformers safetensors pillow numpy
    python scripts/make_hf_fixtures.py

It writes
- `fixtures/hf/<model>/`: an HF CLIP directory (`config.json`, `model.safetensors`, tokenizer and
  preprocessor files) as `save_pretrained` writes it, for two small random models that differ in
  every axis mm must map: activation, end-of-text rule, widths, heads, patch size, context
  length, vocabulary, LayerNorm eps and logit scale;
- `fixtures/hf/<model>.reference.safetensors`: fixed inputs (pixel values, token ids) and what
  `transformers` computes from them (projected image/text features, logits_per_image);
- `fixtures/hf/images/*.png` and `fixtures/hf/preprocess.reference.safetensors`: odd-sized
  images in several colour types and their `pixel_values` from `CLIPImageProcessorPil` and
  `CLIPImageProcessor` (torchvision);
- `fixtures/hf/tokenizer_corpus.json`: 600 varied captions and their HF `CLIPTokenizer` ids.

The tokenizer is HF's own `CLIPTokenizer` pipeline built from the vocabulary and merges in
mm's `crates/mm-data/assets/clip_tokenizer.json` (OpenAI's BPE), so the ids test mm's pipeline
against transformers', not against itself.
"""
import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures/hf"
MM_TOKENIZER = ROOT / "crates/mm-data/assets/clip_tokenizer.json"

# Two shapes. `quick_gelu_legacy_eos` is laid out like openai/clip-vit-base-patch32 (quick_gelu,
# eos_token_id = 2 so HF pools at the argmax of the ids, the real 49,408-token vocabulary);
# `gelu_new_eos` uses exact GELU and pools at the first `eos_token_id` (a small vocabulary whose
# eos is not its largest id, so the two rules give different answers).
MODELS = {
    "quick_gelu_legacy_eos": dict(
        seed=1,
        projection_dim=24,
        logit_scale_init_value=2.6592,
        text_config=dict(
            vocab_size=49408, hidden_size=8, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
            layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        ),
    ),
    "gelu_new_eos": dict(
        seed=2,
        projection_dim=16,
        logit_scale_init_value=2.3,
        text_config=dict(
            vocab_size=1000, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=24, hidden_act="gelu",
            layer_norm_eps=1e-6, bos_token_id=5, eos_token_id=7, pad_token_id=7,
        ),
        vision_config=dict(
            hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
            image_size=40, patch_size=10, hidden_act="gelu", layer_norm_eps=1e-6,
        ),
    ),
}

MODEL_CAPTIONS = [
    "a photo of a cat",
    "A RED circle on a white background.",
    "two dogs playing in the snow, 2021",
    "Café & crème brûlée 🍮",
    "word " * 90,
]


def clip_tokenizer():
    """HF's CLIPTokenizer over OpenAI's vocabulary and merges (taken from mm's asset)."""
    asset = json.loads(MM_TOKENIZER.read_text())
    merges = [tuple(m) for m in asset["model"]["merges"]]
    return CLIPTokenizer(vocab=asset["model"]["vocab"], merges=merges)


def caption_corpus():
    """600 captions: templated scene descriptions plus every awkward kind of text."""
    rng = random.Random(0)
    subjects = ["cat", "dog", "Golden Retriever", "bicycle", "skyscraper", "bowl of ramen",
                "F-16 jet", "toddler", "red panda", "Eiffel Tower", "MacBook Pro", "sourdough loaf",
                "crème brûlée", "naïve painting", "São Paulo street", "Zürich tram", "piñata",
                "jalapeño", "smörgåsbord", "Ελληνικό νησί", "Московское метро", "東京タワー",
                "서울 야경", "北京烤鸭", "mango lassi", "U.S. flag", "e-mail icon", "3D render"]
    adjectives = ["a photo of a", "A blurry picture of the", "an oil painting of a",
                  "close-up: a", "Low-res JPEG of an", "a black & white shot of a",
                  "#throwback a", "vintage (1970s) photo of a", "drawing of my", "RAW image — a",
                  "an AI-generated image of a", "“Award-winning” photo of a", "a sketch of the"]
    scenes = ["on the beach", "at night!!!", "in 4K", "with 3 friends", "at 5:30pm",
              "near 221B Baker St.", "(cropped)", "... again?", "on sale for $19.99", "— 50% off",
              "in the rain ☔", "with emoji 😂🔥👍", "at 12°C", "#nofilter #sunset", "@home",
              "in Paris, France", "vs. the world", "x2", "(c) 2019 Getty Images", "[stock photo]",
              "", "in São Tomé", "it's what we're doing", "they'll see, y'all'd know",
              "I'm sure it's fine", "don't", "we've got it", "& co.", "100%", "1,000,000 views"]
    corpus = [
        "", " ", "a", "A", "!!!", "...", "1234567890", "3.14159", "1/2 cup", "10x-20x",
        "ALL CAPS CAPTION", "MiXeD CaSe", "   lots   of\twhitespace\n here  ",
        "tabs\tand\nnewlines\r\nmixed", "non\u00a0breaking\u2009spaces", "zero\u200bwidth",
        "combining e\u0301 vs precomposed é", "ﬁ ligature and ＦＵＬＬＷＩＤＴＨ", "Straße",
        "emoji 🐱🚀 and CJK 猫", "👨‍👩‍👧‍👦 family", "🇫🇷 flag", "flags 🇺🇸🇯🇵", "math ∑∫√∞≠≤",
        "quotes \"double\" 'single' `back`", "html &amp; entities &lt;b&gt;", "<b>tags</b>",
        "https://example.com/a?b=c&d=e", "user@example.com", "C++ and C#", "snake_case_name",
        "hyphen-ated--double---triple", "ellipsis…", "em—dash en–dash", "¡Hola! ¿Qué tal?",
        "français: à, â, ç, è, é, ê, ë, î, ï, ô, ù, û, ü, ÿ", "Ångström", "Ørsted", "Łódź",
        "Türkçe ğüşöçı İ", "हिन्दी", "العربية", "עברית", "ไทย", "Tiếng Việt",
        "<|startoftext|> in text", "text <|endoftext|> in text", "'s 't 're 've 'm 'll 'd",
        "it's", "IT'S", "rock'n'roll", "o'clock", "'quoted'", "a" * 300,
        "word " * 100, "supercalifragilisticexpialidocious " * 10,
        " ".join(str(i) for i in range(100)), "🙂" * 80, "猫" * 100,
    ]
    while len(corpus) < 600:
        caption = f"{rng.choice(adjectives)} {rng.choice(subjects)} {rng.choice(scenes)}"
        if rng.random() < 0.2:
            caption = caption.upper()
        if rng.random() < 0.1:
            caption = caption + " " + " ".join(rng.choice(subjects) for _ in range(rng.randint(5, 30)))
        corpus.append(caption.strip())
    return corpus


def test_images():
    """Odd-sized images in the colour types users feed CLIP: RGB, RGBA, greyscale, palette."""
    rng = np.random.default_rng(0)
    specs = [("rgb_50x37", 50, 37, "RGB"), ("rgba_37x61", 37, 61, "RGBA"),
             ("grey_45x45", 45, 45, "L"), ("rgb_97x64", 97, 64, "RGB"),
             ("palette_23x30", 23, 30, "P")]
    images = {}
    for name, w, h, mode in specs:
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(x / 5.0) * 100 + 128, np.cos(y / 7.0) * 100 + 128,
                         (x + y) * 255.0 / (w + h)], axis=-1)
        rgb = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(rgb, "RGB")
        if mode == "RGBA":
            alpha = (np.arange(w)[None, :].repeat(h, 0) * 255 // w).astype(np.uint8)
            image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        elif mode == "L":
            image = image.convert("L")
        elif mode == "P":
            image = image.convert("P", palette=Image.ADAPTIVE, colors=16)
        images[name] = image
    return images


def perturb(model, seed):
    """HF's init leaves LayerNorms at 1/0 and biases at 0, which would hide a gamma/beta or
    bias mix-up: give every parameter random structure."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                continue
            scale = 0.1 if ("layer_norm" in name or "layrnorm" in name) else 0.02
            p.add_(torch.randn(p.shape, generator=g) * scale)


def token_ids(name, tokenizer, context_length, vocab_size, eos_token_id):
    if name == "quick_gelu_legacy_eos":
        ids = tokenizer(MODEL_CAPTIONS, padding="max_length", truncation=True,
                        max_length=context_length, return_tensors="pt")["input_ids"]
        # One row without any <|endoftext|>: the legacy rule pools at its largest id.
        row = torch.full((1, context_length), 320)
        row[0, :6] = torch.tensor([49406, 1000, 40000, 12, 39999, 7])
        return ids, row
    # Ids above the eos id after it, and a second eos: first-eos and argmax pooling disagree.
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(eos_token_id + 1, vocab_size, (5, context_length), generator=g)
    ids[:, 0] = 5
    for row, pos in enumerate([3, 10, context_length - 1, 1, 15]):
        ids[row, pos] = eos_token_id
    ids[4, 20] = eos_token_id
    return ids, None


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_tokenizer()

    corpus = caption_corpus()
    cases = []
    for text in corpus:
        ids = tokenizer(text, padding="max_length", truncation=True, max_length=77)["input_ids"]
        cases.append({"text": text, "input_ids": ids})
    (OUT / "tokenizer_corpus.json").write_text(json.dumps(
        {"context_length": 77, "tokenizer": "transformers.CLIPTokenizer", "cases": cases},
        ensure_ascii=False, indent=0) + "\n")

    images = test_images()
    (OUT / "images").mkdir(exist_ok=True)
    for name, image in images.items():
        image.save(OUT / "images" / f"{name}.png")
    loaded = {name: Image.open(OUT / "images" / f"{name}.png") for name in images}

    preprocess = {}
    for size in (32, 80):
        kwargs = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        for backend, cls in (("pil", CLIPImageProcessorPil), ("torchvision", CLIPImageProcessor)):
            processor = cls(**kwargs)
            for name, image in loaded.items():
                pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
                preprocess[f"{backend}/{size}/{name}"] = pixels.contiguous()
    save_file(preprocess, str(OUT / "preprocess.reference.safetensors"),
              metadata={"images": json.dumps(sorted(images))})

    for name, spec in MODELS.items():
        spec = dict(spec)
        seed = spec.pop("seed")
        torch.manual_seed(seed)
        config = CLIPConfig(**spec)
        model = CLIPModel(config).eval()
        perturb(model, seed)
        directory = OUT / name
        model.save_pretrained(directory, safe_serialization=True)
        size = spec["vision_config"]["image_size"]
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        if name == "quick_gelu_legacy_eos":
            CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
            # Same content, unindented: a third of the bytes in the repository.
            tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"), pretty=False)
        else:
            image_processor.save_pretrained(directory)

        text = spec["text_config"]
        ids, extra_row = token_ids(name, tokenizer, text["max_position_embeddings"],
                                   text["vocab_size"], text["eos_token_id"])
        if extra_row is not None:
            ids = torch.cat([ids, extra_row])
        pixel_values = torch.stack([
            image_processor(images=image, return_tensors="pt")["pixel_values"][0]
            for image in loaded.values()])
        with torch.no_grad():
            image_features = model.get_image_features(pixel_values=pixel_values).pooler_output
            text_features = model.get_text_features(input_ids=ids).pooler_output
            out = model(input_ids=ids, pixel_values=pixel_values)
        save_file({
            "pixel_values": pixel_values.contiguous(),
            "input_ids": ids.to(torch.int64).contiguous(),
            "image_features": image_features.contiguous(),
            "text_features": text_features.contiguous(),
            "logits_per_image": out.logits_per_image.contiguous(),
        }, str(OUT / f"{name}.reference.safetensors"), metadata={
            "captions": json.dumps(MODEL_CAPTIONS if name == "quick_gelu_legacy_eos" else []),
            "images": json.dumps(list(loaded)),
        })
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
