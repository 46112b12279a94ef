#!/usr/bin/env python3
"""The PyTorch side of `cargo bench -p mm-benches --bench gemm_roofline`: fp32 `x @ w` (MKL's
sgemm on x86 builds) on the shapes given, under whatever instruction-set caps the environment
sets (`ATEN_CPU_CAPABILITY`, `ONEDNN_MAX_CPU_ISA`, `MKL_ENABLE_INSTRUCTIONS`).
Prints one JSON object: GFLOP/s per shape (median of the timed calls) and the capability.

    benches/.venv/bin/python benches/torch_gemm.py --threads 2 --shapes 1600x768x2304
"""
import argparse
import json
import time

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--shapes", nargs="+", required=True, help="MxKxN")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gflops = []
    for shape in args.shapes:
        m, k, n = (int(v) for v in shape.split("x"))
        x, w = torch.randn(m, k), torch.randn(k, n)
        for _ in range(2):
            x @ w
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            x @ w
            times.append(time.perf_counter() - start)
        gflops.append(2 * m * k * n / sorted(times)[len(times) // 2] / 1e9)
    print(json.dumps({"gflops": gflops, "capability": torch.backends.cpu.get_cpu_capability(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
