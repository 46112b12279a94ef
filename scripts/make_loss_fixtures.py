#!/usr/bin/env python3
"""Builds `fixtures/losses/open_clip_losses.safetensors`: open_clip's own `ClipLoss` and
`SigLipLoss` (and their gradients, by torch autograd) on fixed random features, which mm's
`mm-contrastive` tests compare against (no Python at test time).

Run once by hand, from the repo root, with torch and open_clip from PyPI:
    bash benches/setup_venv.sh        # benches/.venv with torch + open_clip_torch
    benches/.venv/bin/python scripts/make_loss_fixtures.py

For each case `c{k}` it stores the raw (unnormalised) image and text features `[n, d]`, the
log temperature `logit_scale` and `logit_bias`, and for both losses the value and the
gradients with respect to the raw features, the log temperature and (SigLIP) the bias. open_clip
takes L2-normalised features and `exp(logit_scale)`; the normalisation and the exponential are
done here in torch, so the gradients are those of mm's signature (raw features, log scale).
"""
from pathlib import Path

import open_clip
import torch
from open_clip.loss import ClipLoss, SigLipLoss
from safetensors.torch import save_file

# (n, d, logit_scale, logit_bias): a small batch at SigLIP's initialisation, a trained-looking
# temperature with a moderate bias, one near the clamp (ln 100), and a batch of one.
CASES = [
    (8, 16, 2.302585092994046, -10.0),
    (12, 32, 3.5, -4.0),
    (5, 8, 4.6, 1.5),
    (1, 4, 1.0, 0.0),
]


def losses(image, text, log_scale, bias):
    """open_clip's two losses of raw features, and their gradients."""
    out = {}
    for name, loss_fn in [("clip", ClipLoss()), ("siglip", SigLipLoss())]:
        leaves = [t.detach().clone().double().requires_grad_(True) for t in (image, text, log_scale, bias)]
        im, tx, s, b = leaves
        f_im = torch.nn.functional.normalize(im, dim=-1)
        f_tx = torch.nn.functional.normalize(tx, dim=-1)
        if name == "clip":
            loss = loss_fn(f_im, f_tx, s.exp())
        else:
            loss = loss_fn(f_im, f_tx, s.exp(), b)
        loss.backward()
        out[f"{name}.loss"] = loss.detach().reshape(1)
        out[f"{name}.grad_image"] = im.grad
        out[f"{name}.grad_text"] = tx.grad
        out[f"{name}.grad_logit_scale"] = s.grad.reshape(1)
        if name == "siglip":
            out[f"{name}.grad_logit_bias"] = b.grad.reshape(1)
    return out


def main():
    torch.manual_seed(0)
    tensors = {}
    for k, (n, d, log_scale, bias) in enumerate(CASES):
        image = torch.randn(n, d, dtype=torch.float64)
        # Texts correlated with their images, so the positives differ from the negatives.
        text = 0.7 * image + 0.5 * torch.randn(n, d, dtype=torch.float64)
        s = torch.tensor(log_scale, dtype=torch.float64)
        b = torch.tensor(bias, dtype=torch.float64)
        case = {"image": image, "text": text, "logit_scale": s.reshape(1), "logit_bias": b.reshape(1)}
        case.update(losses(image, text, s, b))
        for key, value in case.items():
            tensors[f"c{k}.{key}"] = value.contiguous().to(torch.float64)
    out = Path("fixtures/losses/open_clip_losses.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out, metadata={"open_clip": open_clip.__version__, "torch": torch.__version__})
    print(f"wrote {out} ({len(CASES)} cases, open_clip {open_clip.__version__})")


if __name__ == "__main__":
    main()
