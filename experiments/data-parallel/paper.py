"""On paper: data-parallel CLIP ViT-B/32 on 8-64 GPUs with mm's scheme (features all-gathered,
gradients all-reduced in one fp32 buffer, no overlap with the backward pass). Prints markdown.

Assumptions, stated so they can be changed:
- ViT-B/32 CLIP: 151,277,313 parameters (mm's `vit-b-32` preset, equal to OpenAI's); embed 512.
- 7.40 GMACs per sample forward (image 4.41 at 224 px + text 2.96 at 77 tokens, open_clip's
  profile), so 2 x 7.40 x 3 = 44.4 GFLOPs per trained sample (forward + backward).
- A GPU sustaining 125 TFLOP/s on it (an A100's 312 bf16 peak at 40% utilisation).
- Ring collectives: an all-reduce of S bytes moves 2 (N-1)/N S per GPU, an all-gather
  (N-1)/N of the gathered total; a link of bandwidth W GB/s per GPU, latency ignored.
"""

PARAMS = 151_277_313
EMBED = 512
FLOPS_PER_SAMPLE = 2 * 7.40e9 * 3
GPU_FLOPS = 125e12
LINKS = [("100 Gb/s IB", 12.5e9), ("400 Gb/s IB", 50e9), ("NVLink 3", 300e9)]


def ms(seconds):
    return f"{1e3 * seconds:.0f}" if seconds >= 0.01 else f"{1e3 * seconds:.1f}"


grad_bytes = PARAMS * 4
print("# On paper: ViT-B/32 CLIP on 8-64 GPUs\n")
print(__doc__.split("\n\n", 1)[1].strip() + "\n")
print(
    f"Gradient all-reduce: {grad_bytes / 1e6:.0f} MB per step whatever the batch (one fp32 buffer)."
)
print(
    f"Feature all-gather: global batch x {EMBED} x 2 (image, text) x 4 B = {EMBED * 2 * 4} B per sample;"
    " `local_loss` adds a reduce-scatter of the same size for the feature gradients.\n"
)
print("## Step time, 256 samples per GPU\n")
print(
    "| GPUs | global batch | compute | all-reduce (100 Gb/s / 400 Gb/s / NVLink) | all-gather (same links) | communication share at 100 Gb/s / 400 Gb/s |"
)
print("|---|---|---|---|---|---|")
for n in [8, 16, 32, 64]:
    local = 256
    global_batch = n * local
    compute = local * FLOPS_PER_SAMPLE / GPU_FLOPS
    # Non-local loss: every rank also computes the G x G logits (fwd + bwd, both directions).
    compute += 3 * 2 * global_batch * global_batch * EMBED / GPU_FLOPS
    reduce = [2 * (n - 1) / n * grad_bytes / w for _, w in LINKS]
    gather = [(n - 1) / n * global_batch * EMBED * 2 * 4 / w for _, w in LINKS]
    share = [
        (reduce[i] + gather[i]) / (compute + reduce[i] + gather[i]) for i in range(2)
    ]
    print(
        f"| {n} | {global_batch:,} | {ms(compute)} ms | "
        + " / ".join(ms(r) for r in reduce)
        + " ms | "
        + " / ".join(ms(g) for g in gather)
        + " ms | "
        + " / ".join(f"{100 * s:.0f}%" for s in share)
        + " |"
    )
print(
    "\nThe all-reduce dominates communication and does not shrink with more GPUs; the feature"
    " all-gather is small (MBs). Over 100 Gb/s the unoverlapped all-reduce costs about as much as"
    " the compute, which is why frameworks overlap it with the backward pass (DDP buckets) or"
    " reduce in bf16 (half the bytes): the next steps for mm on GPUs.\n"
)
print("## Where `local_loss` matters: memory of the logits per GPU\n")
print(
    "Without it every rank holds the global G x G similarities for both directions with their"
    " softmax and gradients (about 4 fp32 G x G buffers); with it, its own G/N rows"
    " (4 buffers of G/N x G). Compute of the loss falls by N as well.\n"
)
print("| global batch | GPUs | logits memory, full | with local_loss | full loss FLOPs as share of the step |")
print("|---|---|---|---|---|")
for global_batch, n in [(4096, 16), (16384, 64), (32768, 64), (65536, 64)]:
    full = 4 * global_batch * global_batch * 4
    local = full / n
    compute = (global_batch // n) * FLOPS_PER_SAMPLE
    loss = 3 * 2 * global_batch * global_batch * EMBED
    print(
        f"| {global_batch:,} | {n} | {full / 2**30:.2f} GiB | {local / 2**30:.3f} GiB | {100 * loss / (loss + compute):.0f}% |"
    )
print(
    "\nAt 32k (the batch of OpenAI's CLIP and open_clip's LAION runs) the full logits take 16 GiB"
    " per GPU next to the model's activations: `local_loss` is what makes it fit, and it also"
    " divides by N a loss compute that grows to a fifth of the step at 64k."
)
