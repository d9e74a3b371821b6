"""A procedural captioned dataset: coloured shapes at positions ("a red circle at the top left")."""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "centre": (0.5, 0.5),
}
CLASSES = list(itertools.product(COLOURS, SHAPES, POSITIONS))  # 60 (colour, shape, position)


def prompt(colour: str, shape: str, position: str) -> str:
    where = "in the centre" if position == "centre" else f"at the {position}"
    return f"a {colour} {shape} {where}"


def render(colour: str, shape: str, position: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One image, uint8 (size, size, 3): a jittered shape on a light, slightly varied background."""
    bg = tuple(int(v) for v in rng.integers(225, 250, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    cx, cy = (np.array(POSITIONS[position]) + rng.uniform(-0.04, 0.04, 2)) * size
    r = size * rng.uniform(0.14, 0.19)
    fill = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[colour])
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    return np.asarray(img)


def make(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, list[str], np.ndarray]:
    """n images (uint8 N,H,W,3), their prompts, and class labels (N, 3): colour, shape, position indices."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(CLASSES), n)
    images, prompts, labels = [], [], []
    for k in picks:
        c, s, p = CLASSES[k]
        images.append(render(c, s, p, rng, size))
        prompts.append(prompt(c, s, p))
        labels.append((list(COLOURS).index(c), SHAPES.index(s), list(POSITIONS).index(p)))
    return np.stack(images), prompts, np.array(labels)


def eval_prompts(per_class: int) -> tuple[list[str], np.ndarray]:
    """Every class `per_class` times, in a fixed order, with its labels."""
    prompts, labels = [], []
    for c, s, p in CLASSES:
        for _ in range(per_class):
            prompts.append(prompt(c, s, p))
            labels.append((list(COLOURS).index(c), SHAPES.index(s), list(POSITIONS).index(p)))
    return prompts, np.array(labels)
