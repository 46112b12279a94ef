#!/usr/bin/env python3
"""Builds mm's CLIP tokenizer (`crates/mm-data/assets/clip_tokenizer.json`).

Run once by hand; needs no network beyond PyPI:
    pip install transformers tokenizers && pip download --no-deps -d /tmp/oc open_clip_torch
    python scripts/make_tokenizer.py /tmp/oc/open_clip_torch-*.whl

The BPE merges are OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT, shipped in the open_clip_torch
wheel). The vocabulary is built from them exactly as OpenAI's `SimpleTokenizer` does, which is
also how `openai/clip-vit-base-patch32`'s vocab.json was made; HF `CLIPTokenizerFast` converts it
to a `tokenizers` JSON file that the Rust `tokenizers` crate loads.
"""
import gzip
import json
import sys
import tempfile
import zipfile
from pathlib import Path

from transformers import CLIPTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
ASSET = ROOT / "crates/mm-data/assets/clip_tokenizer.json"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return [chr(c) for c in cs]


def main(wheel):
    with zipfile.ZipFile(wheel) as z:
        bpe = gzip.decompress(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8")
    merges = [tuple(m.split()) for m in bpe.split("\n")[1 : 49152 - 256 - 2 + 1]]
    vocab = bytes_to_unicode()
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        merges_file = Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
        merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        fast = CLIPTokenizerFast(str(vocab_file), str(merges_file))
        fast.backend_tokenizer.save(str(ASSET))

    print(f"wrote {ASSET} (its parity with HF CLIPTokenizer: scripts/make_hf_fixtures.py)")


if __name__ == "__main__":
    main(sys.argv[1])
