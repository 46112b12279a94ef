#!/usr/bin/env python3
"""The Python side of `cargo bench -p mm-benches --bench data_pipeline`: the same JPEG files
through PIL + torchvision's CLIP eval transform (open_clip's `image_transform(224,
is_train=False)`: Resize(224, bicubic), CenterCrop(224), ToTensor, Normalize), batched by a
torch DataLoader as open_clip trains. Prints one JSON line per worker count.

    pip install pillow torch torchvision
    python benches/pil_pipeline.py FILE_LIST --workers 1 2
"""
import argparse
import json
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class Files(Dataset):
    def __init__(self, paths, size):
        self.paths = paths
        self.transform = transforms.Compose([
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def rate(paths, size, workers, repeats):
    torch.set_num_threads(1)
    # workers == 1 decodes in the main process (one core); N > 1 uses N worker processes.
    loader = DataLoader(Files(paths, size), batch_size=64, num_workers=0 if workers == 1 else workers)
    for _ in loader:  # warm-up: page cache, worker start-up
        break
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = sum(batch.shape[0] for batch in loader)
        best = max(best, n / (time.perf_counter() - start))
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("file_list")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    paths = [line for line in open(args.file_list).read().splitlines() if line]
    for workers in args.workers:
        print(json.dumps({"workers": workers, "images_per_sec": rate(paths, args.size, workers, args.repeats)}), flush=True)


if __name__ == "__main__":
    main()
