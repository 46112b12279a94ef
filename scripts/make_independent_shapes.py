#!/usr/bin/env python3
"""Draws an independent test set of coloured shapes with Pillow.

The built-in shapes data (crates/mm-data/src/shapes.rs) is rendered by our own Rust code:
shapes centred, of one size, with 2x2 supersampling and pixel noise. This set is drawn by a
different renderer (Pillow's ImageDraw polygon/ellipse, 4x supersampling downscaled with
LANCZOS, then a Gaussian blur) from a different distribution: ONE shape per image at a random
position (fully inside the picture), of a random radius (35-80 px on 224 px), on a random
light or dark background. It checks whether a checkpoint names colour and shape, rather than
the particular pictures it was trained on.

Classes: 4 colours x 4 shapes = 16 (`<colour> <shape>`, e.g. `red circle`), a subset of the
built-in data's 48 classes with the same colour values and the same shape geometry (square
half-side 0.8 of the radius, triangle regular with its apex up, star 5-pointed with an inner
radius 0.45 of the outer).

Layout: OUT/<colour> <shape>/NNN.png (a folder per class, named as the class), OUT/classes.txt
(the class names in sorted order, one per line: the order `mm-train eval --folder` numbers the
class folders in, so the file is also right for `eval --classes`), OUT/README.md.

Everything is a function of --seed: the same command writes the same files.

    python3 scripts/make_independent_shapes.py --out assets/independent_shapes
"""

import argparse
import math
import random
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = 224
SUPERSAMPLE = 4
RADIUS_RANGE = (35.0, 80.0)
BLUR_RANGE = (0.5, 2.0)
COLOUR_JITTER = 15
MIN_COLOUR_DISTANCE = 120.0  # as crates/mm-data/src/shapes.rs picks backgrounds

COLOURS = {
    "red": (220, 30, 35),
    "green": (35, 165, 60),
    "blue": (35, 75, 220),
    "yellow": (245, 220, 40),
}
SHAPES = ["circle", "square", "triangle", "star"]


def colour_distance(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def background(rng, colour):
    """A light (200-255: grey or a pale tint) or dark (0-60) background far from `colour`."""
    for _ in range(1000):
        light = rng.random() < 0.5
        lo, hi = (200, 255) if light else (0, 60)
        if rng.random() < 0.5:  # grey-ish: one level, channels within a few steps of it
            level = rng.randint(lo, hi)
            bg = tuple(min(hi, max(lo, level + rng.randint(-4, 4))) for _ in range(3))
        else:  # a tint: channels independent
            bg = tuple(rng.randint(lo, hi) for _ in range(3))
        if colour_distance(bg, colour) > MIN_COLOUR_DISTANCE:
            return bg
    raise RuntimeError(f"no background far enough from {colour}")


def polygon(points, inner, cx, cy, r, rotation):
    """Vertices of a regular polygon (`points` outer vertices, the first pointing up, at
    radius r) alternating with inner vertices at radius inner*r when inner < 1 (a star).
    Rotation in radians, clockwise on screen."""
    step = 1 if inner >= 1.0 else 2
    n = points * step
    out = []
    for i in range(n):
        rad = r if i % step == 0 else inner * r
        angle = -math.pi / 2 + 2 * math.pi * i / n + rotation
        out.append((cx + rad * math.cos(angle), cy + rad * math.sin(angle)))
    return out


def square(cx, cy, r, rotation):
    h = 0.8 * r
    cos, sin = math.cos(rotation), math.sin(rotation)
    corners = [(-h, -h), (h, -h), (h, h), (-h, h)]
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners]


def extent(shape, rotation):
    """How far from the centre the shape reaches, in units of its radius."""
    if shape == "square":
        # the corners lie at 0.8*sqrt(2) = 1.13 radii
        return 0.8 * (abs(math.cos(rotation)) + abs(math.sin(rotation)))
    return 1.0


def draw_image(rng, colour_name, shape):
    base = COLOURS[colour_name]
    colour = tuple(
        min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in base
    )
    bg = background(rng, colour)
    r = rng.uniform(*RADIUS_RANGE)
    if shape in ("square", "triangle"):
        rotation = rng.uniform(-0.3, 0.3)
    elif shape == "star":
        rotation = rng.uniform(0.0, 2 * math.pi / 5)
    else:
        rotation = 0.0
    reach = extent(shape, rotation) * r + 3.0  # a margin for the blur
    cx = rng.uniform(reach, SIZE - reach)
    cy = rng.uniform(reach, SIZE - reach)
    blur = rng.uniform(*BLUR_RANGE)

    s = SUPERSAMPLE
    big = Image.new("RGB", (SIZE * s, SIZE * s), bg)
    draw = ImageDraw.Draw(big)
    bx, by, br = cx * s, cy * s, r * s
    if shape == "circle":
        draw.ellipse((bx - br, by - br, bx + br, by + br), fill=colour)
    elif shape == "square":
        draw.polygon(square(bx, by, br, rotation), fill=colour)
    elif shape == "triangle":
        draw.polygon(polygon(3, 1.0, bx, by, br, rotation), fill=colour)
    elif shape == "star":
        draw.polygon(polygon(5, 0.45, bx, by, br, rotation), fill=colour)
    else:
        raise ValueError(shape)
    image = big.resize((SIZE, SIZE), Image.LANCZOS)
    return image.filter(ImageFilter.GaussianBlur(radius=blur))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="assets/independent_shapes", type=Path)
    parser.add_argument("--per-class", default=10, type=int)
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args()

    classes = sorted(f"{c} {s}" for c in COLOURS for s in SHAPES)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for k, name in enumerate(classes):
        colour_name, shape = name.split(" ")
        folder = args.out / name
        folder.mkdir()
        # a generator per class, so one class's images do not depend on the others'
        rng = random.Random(f"independent-shapes/{args.seed}/{name}")
        for i in range(args.per_class):
            draw_image(rng, colour_name, shape).save(folder / f"{i:03d}.png", optimize=True)
    (args.out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    command = (
        "python3 scripts/make_independent_shapes.py"
        f" --out {args.out} --per-class {args.per_class} --seed {args.seed}"
    )
    (args.out / "README.md").write_text(
        f"""# Independent shapes test set

{len(classes)} classes x {args.per_class} images = {len(classes) * args.per_class} PNGs of \
{SIZE}x{SIZE}, drawn with Pillow (not by the repository's Rust renderer), deterministically \
from the seed, by:

    {command}

- Classes: the colours {", ".join(COLOURS)} x the shapes {", ".join(SHAPES)}, with the \
built-in data's colour values and shape geometry.
- ONE shape per image, at a random position (fully inside the picture), radius uniform in \
{RADIUS_RANGE[0]:g}-{RADIUS_RANGE[1]:g} px; squares and triangles rotated by at most \
±0.3 rad (kept upright), stars by any angle.
- Its colour jittered by up to ±{COLOUR_JITTER} per channel; drawn with ImageDraw \
polygon/ellipse at {SUPERSAMPLE}x and downscaled with LANCZOS, then a Gaussian blur of \
radius {BLUR_RANGE[0]:g}-{BLUR_RANGE[1]:g} px.
- Background light (200-255: grey or a pale tint) or dark (0-60), at a colour distance \
above {MIN_COLOUR_DISTANCE:g} from the shape's colour.

Unlike the built-in data (centred shapes of one size), shapes here move and change size.

Layout: `<colour> <shape>/NNN.png` (a folder per class, named as the class) and
`classes.txt` (the class names in sorted order, the order `mm-train eval --folder` numbers
the folders in). Zero-shot top-1 of a checkpoint over these 16 classes:

    scripts/independent_shapes_accuracy.sh CHECKPOINT
    # runs: mm-train eval --checkpoint CHECKPOINT --folder assets/independent_shapes
"""
    )
    print(f"wrote {len(classes) * args.per_class} images in {len(classes)} classes to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
