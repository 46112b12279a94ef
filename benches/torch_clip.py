#!/usr/bin/env python3
"""The PyTorch side of `cargo bench -p mm-benches --bench side_by_side`: open_clip's `CLIP`
built with the same shape as mm's, `open_clip.loss.ClipLoss`, `torch.optim.AdamW`, on CPU in fp32
or (`--precision bf16`) under `torch.autocast("cpu", dtype=torch.bfloat16)` (oneDNN's bf16
kernels; fp32 master weights, as open_clip's `--precision amp_bf16`).
Prints one JSON object: train-step samples/s (forward + backward + optimiser), image- and
text-encoder inference items/s, and peak RSS.

    bash benches/setup_venv.sh            # makes benches/.venv with torch + open_clip_torch
    benches/.venv/bin/python benches/torch_clip.py --shape bench --batch 64 --threads 2
"""
import argparse
import contextlib
import json
import resource
import time

import torch
from open_clip.loss import ClipLoss
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

SHAPES = {
    # issue 7's bench shape
    "bench": dict(embed_dim=128,
                  vision=dict(image_size=96, patch_size=16, width=192, layers=6, head_width=64, mlp_ratio=4.0),
                  text=dict(context_length=32, vocab_size=49408, width=128, layers=4, heads=2)),
    # OpenAI ViT-B/32 (mm's vit-b-32 preset)
    "vit-b-32": dict(embed_dim=512,
                     vision=dict(image_size=224, patch_size=32, width=768, layers=12, head_width=64, mlp_ratio=4.0),
                     text=dict(context_length=77, vocab_size=49408, width=512, layers=12, heads=8)),
}


def rate(fn, batch, warmup, iters):
    """Items per second from the median time of `iters` calls (as the Rust side measures)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return batch / sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="bench", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = SHAPES[args.shape]
    model = CLIP(shape["embed_dim"], CLIPVisionCfg(**shape["vision"]), CLIPTextCfg(**shape["text"]),
                 quick_gelu=True)
    size, ctx = shape["vision"]["image_size"], shape["text"]["context_length"]
    pixels = torch.randn(args.batch, 3, size, size)
    ids = torch.randint(1, 49406, (args.batch, ctx))
    ids[:, 0], ids[:, -1] = 49406, 49407
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)

    def autocast():
        if args.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            image, text, scale = model(pixels, ids)
            loss = loss_fn(image, text, scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    train = rate(step, args.batch, 2, args.iters)
    model.eval()
    with torch.no_grad(), autocast():
        image = rate(lambda: model.encode_image(pixels), args.batch, 2, args.iters)
        text = rate(lambda: model.encode_text(ids), args.batch, 2, args.iters)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"train_samples_per_sec": train, "image_per_sec": image, "text_per_sec": text,
                      "peak_rss_mib": peak_mib, "torch": torch.__version__,
                      "capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
                      "precision": args.precision}))


if __name__ == "__main__":
    main()
