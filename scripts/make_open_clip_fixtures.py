#!/usr/bin/env python3
"""Builds the open_clip CoCa reference fixtures under `fixtures/open_clip/` that mm's tests
compare against (no network at test time, nothing downloaded: the models are random-initialised
here).

Run once by hand, from the repo root, with open_clip and torch from PyPI (benches/setup_venv.sh
makes such a venv):
    benches/.venv/bin/python scripts/make_open_clip_fixtures.py

For each of two small random CoCa models that differ in every axis mm must map (attentional
pooler keys from another width -> separate q/k/v weights, or the same width -> one packed
`in_proj_weight`; GELU or QuickGELU; sizes) it writes
- `fixtures/open_clip/<model>/open_clip_config.json` and `open_clip_model.safetensors`, as
  open_clip's hub export names them;
- `fixtures/open_clip/<model>.reference.safetensors`: fixed inputs (pixels, token ids with
  padding, id 0, in several places) and what open_clip computes from them: the image and text
  features before normalisation, the image tokens the decoder reads, the caption logits of
  `CoCa.forward`, `CoCaLoss` (caption weight 2, contrastive weight 1) and its parts, and a
  greedy caption of each image (the argmax loop of open_clip's `generate`, without its
  minimum length).
"""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from open_clip.coca_model import CoCa
from open_clip.loss import CoCaLoss

OUT = Path("fixtures/open_clip")

MODELS = {
    # Pooler keys from a wider tower (separate q/k/v weights), GELU.
    "coca_separate_kv": {
        "embed_dim": 48,
        "quick_gelu": False,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": 8, "attentional_pool": True, "attn_pooler_queries": 9,
                       "attn_pooler_heads": 4, "output_tokens": True},
        "text_cfg": {"context_length": 12, "vocab_size": 100, "width": 48, "heads": 4,
                     "layers": 2, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 12, "vocab_size": 100, "width": 48, "heads": 4,
                           "layers": 2, "attn_pooler_heads": 4},
    },
    # Pooler keys of the same width (one packed in_proj_weight), QuickGELU, MLP ratio 2.
    "coca_packed_kv": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 24, "layers": 1, "width": 32, "head_width": 16,
                       "patch_size": 6, "mlp_ratio": 2.0, "attentional_pool": True,
                       "attn_pooler_queries": 5, "attn_pooler_heads": 2, "output_tokens": True},
        "text_cfg": {"context_length": 10, "vocab_size": 60, "width": 32, "heads": 2,
                     "layers": 3, "mlp_ratio": 2.0, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 10, "vocab_size": 60, "width": 32, "heads": 2,
                           "layers": 1, "mlp_ratio": 2.0, "attn_pooler_heads": 2},
    },
}


def token_ids(generator, batch, context, vocab):
    """Start token, random ids, end token, padding (0) after it; one row full, one with an
    id 0 inside the text (open_clip masks keys after any 0)."""
    sot, eot = vocab - 2, vocab - 1
    rows = []
    lengths = [context, 3, context // 2, 5]
    for b in range(batch):
        length = lengths[b % len(lengths)]
        inner = torch.randint(1, vocab - 2, (length - 2,), generator=generator).tolist()
        if b == 3:
            inner[1] = 0
        row = [sot] + inner + [eot]
        rows.append(row + [0] * (context - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def greedy(model, images, sot, eot, steps):
    text = torch.full((images.shape[0], 1), sot, dtype=torch.long)
    image_latent, image_embs = model._encode_image(images)
    done = torch.zeros(images.shape[0], dtype=torch.bool)
    for _ in range(steps):
        logits = model(images, text, image_latent=image_latent, image_embs=image_embs,
                       output_labels=False)["logits"][:, -1]
        token = logits.argmax(-1)
        token = torch.where(done, torch.zeros_like(token), token)
        text = torch.cat([text, token[:, None]], 1)
        done |= token == eot
    return text


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, (name, cfg) in enumerate(MODELS.items()):
        torch.manual_seed(seed)
        model = CoCa(cfg["embed_dim"], cfg["multimodal_cfg"], cfg["text_cfg"], cfg["vision_cfg"],
                     quick_gelu=cfg["quick_gelu"])
        # Random weights everywhere (open_clip zero-inits biases and LayerNorms; mm must map
        # each of them, so none may be left at a value that hides a wrong mapping).
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 else 0.0) * 0.1)
            model.logit_scale.fill_(2.3)
        model.eval()
        directory = OUT / name
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, directory / "open_clip_model.safetensors")
        (directory / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}, indent=2) + "\n")

        generator = torch.Generator().manual_seed(100 + seed)
        size = cfg["vision_cfg"]["image_size"]
        text_cfg = cfg["text_cfg"]
        images = torch.randn(4, 3, size, size, generator=generator)
        ids = token_ids(generator, 4, text_cfg["context_length"], text_cfg["vocab_size"])
        with torch.no_grad():
            image_latent, image_embs = model._encode_image(images, normalize=False)
            text_latent, _ = model._encode_text(ids, normalize=False)
            out = model(images, ids)
            loss = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)
            clip_part, caption_part = loss(out["image_features"], out["text_features"],
                                           out["logits"], out["labels"], out["logit_scale"])
            vocab = text_cfg["vocab_size"]
            captions = greedy(model, images, vocab - 2, vocab - 1, text_cfg["context_length"] - 1)
        save_file({
            "pixel_values": images.contiguous(),
            "input_ids": ids.contiguous(),
            "image_features": image_latent.contiguous(),
            "text_features": text_latent.contiguous(),
            "image_tokens": image_embs.contiguous(),
            "logits": out["logits"].contiguous(),
            "logit_scale": out["logit_scale"].reshape(1).contiguous(),
            "clip_loss": clip_part.reshape(1).contiguous(),
            "caption_loss": caption_part.reshape(1).contiguous(),
            "greedy_ids": captions.contiguous(),
        }, OUT / f"{name}.reference.safetensors")
        print(name, sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    main()
