"""The toy world: procedurally rendered shapes, their captions, and the vocabulary.

Every image shows one object class in one colour and one style on a dark background.
Captions name a random subset of those attributes, with synonyms, and include the bare
forms ("circle", "a circle", "striped") that ESD conditions on: a concept the model
never saw alone gives erasure nothing to grip.

    >>> images, labels = render_batch(np.random.default_rng(0), 4)
    >>> images.shape, images.dtype
    ((4, 32, 32, 3), dtype('float32'))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
SUPERSAMPLE = 2  # render at 2x and average-pool, for anti-aliased edges

# Each concept: canonical word first, then synonyms used in captions and accepted in prompts.
OBJECTS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle", "wedge"),
    "cross": ("cross", "plus"),
}
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.78, 0.15),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.88, 0.10),
}
STYLES: dict[str, tuple[str, ...]] = {
    "plain": ("plain",),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted"),
}

OBJECT_NAMES = list(OBJECTS)
COLOUR_NAMES = list(COLOURS)
STYLE_NAMES = list(STYLES)
# The judge's object head has one extra class for "no object at all".
JUDGE_OBJECT_NAMES = OBJECT_NAMES + ["none"]


@dataclass(frozen=True)
class Labels:
    """Integer labels of a batch: indices into OBJECT_NAMES / COLOUR_NAMES / STYLE_NAMES."""

    object: np.ndarray  # (N,) int64, len(OBJECT_NAMES) means "none" (background only)
    colour: np.ndarray  # (N,) int64
    style: np.ndarray  # (N,) int64


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    size = IMAGE_SIZE * SUPERSAMPLE
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / SUPERSAMPLE
    return np.broadcast_to(xs, (n, size, size)), np.broadcast_to(ys, (n, size, size))


def _shape_masks(obj: np.ndarray, cx, cy, s, x, y) -> np.ndarray:
    dx, dy = x - cx, y - cy  # (N, S, S)
    circle = dx**2 + dy**2 <= s**2
    square = (np.abs(dx) <= 0.85 * s) & (np.abs(dy) <= 0.85 * s)
    # Upward triangle: apex at cy - s, base at cy + 0.8 s, half-width 1.05 s at the base.
    top, bottom = cy - s, cy + 0.8 * s
    triangle = (y >= top) & (y <= bottom) & (np.abs(dx) <= (y - top) / (bottom - top) * 1.05 * s)
    arm = 0.32 * s
    cross = ((np.abs(dx) <= arm) & (np.abs(dy) <= s)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= s))
    masks = np.stack([circle, square, triangle, cross, np.zeros_like(circle)])  # (5, N, S, S)
    return masks[obj, np.arange(len(obj))]


def _style_pattern(style: np.ndarray, x, y, rng: np.random.Generator) -> np.ndarray:
    """1 where the shape shows its colour, 0 where the style darkens it."""
    n = len(style)
    phase = rng.uniform(0, 8, size=(n, 1, 1)).astype(np.float32)
    stripes = ((x + y + phase) % 6.0) < 3.0
    ox = rng.uniform(0, 5, size=(n, 1, 1)).astype(np.float32)
    oy = rng.uniform(0, 5, size=(n, 1, 1)).astype(np.float32)
    ddx = (x + ox) % 5.0 - 2.5
    ddy = (y + oy) % 5.0 - 2.5
    dots = ddx**2 + ddy**2 > 1.4**2
    patterns = np.stack([np.ones_like(stripes), stripes, dots])  # plain, striped, dotted
    return patterns[style, np.arange(n)]


def render(obj: np.ndarray, colour: np.ndarray, style: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render images for given label arrays. Returns (N, 32, 32, 3) float32 in [0, 1]."""
    n = len(obj)
    x, y = _grid(n)
    cx = rng.uniform(12.5, 19.5, size=(n, 1, 1)).astype(np.float32)
    cy = rng.uniform(12.5, 19.5, size=(n, 1, 1)).astype(np.float32)
    s = rng.uniform(8.0, 11.5, size=(n, 1, 1)).astype(np.float32)
    mask = _shape_masks(obj, cx, cy, s, x, y).astype(np.float32)
    pattern = _style_pattern(style, x, y, rng).astype(np.float32)

    rgb = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)[colour]  # (N, 3)
    rgb = np.clip(rgb + rng.uniform(-0.06, 0.06, size=rgb.shape), 0, 1).astype(np.float32)
    background = rng.uniform(0.08, 0.28, size=(n, 1, 1, 1)).astype(np.float32)

    shade = pattern[..., None] * rgb[:, None, None, :] + (1 - pattern[..., None]) * 0.25 * rgb[:, None, None, :]
    image = mask[..., None] * shade + (1 - mask[..., None]) * background  # (N, S, S, 3)
    image = image.reshape(n, IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE, 3).mean(axis=(2, 4))
    return image.astype(np.float32)


def render_batch(rng: np.random.Generator, n: int, p_none: float = 0.0) -> tuple[np.ndarray, Labels]:
    """Render n random images; a fraction p_none show no object (for the judge)."""
    obj = rng.integers(0, len(OBJECT_NAMES), size=n)
    if p_none > 0:
        obj = np.where(rng.random(n) < p_none, len(OBJECT_NAMES), obj)
    colour = rng.integers(0, len(COLOUR_NAMES), size=n)
    style = rng.integers(0, len(STYLE_NAMES), size=n)
    return render(obj, colour, style, rng), Labels(obj, colour, style)


def _word(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    # The canonical word 60% of the time, synonyms share the rest: both must work.
    if len(words) == 1 or rng.random() < 0.6:
        return words[0]
    return words[1 + rng.integers(0, len(words) - 1)]


def caption(rng: np.random.Generator, obj: int, colour: int, style: int, p_empty: float = 0.1) -> str:
    """A random caption for one image. Unmentioned attributes are unconstrained.

    Empty ~10% of the time (classifier-free guidance); otherwise names the object with
    p=0.85, the colour with p=0.7 and the style with p=0.6 (never "plain" alone), so bare
    forms such as "circle", "a circle", "striped" and "red" all occur.
    """
    if rng.random() < p_empty:
        return ""
    style_name = STYLE_NAMES[style]
    o = _word(rng, OBJECTS[OBJECT_NAMES[obj]]) if rng.random() < 0.85 else None
    c = COLOUR_NAMES[colour] if rng.random() < 0.7 else None
    s = _word(rng, STYLES[style_name]) if rng.random() < 0.6 else None
    if s == "plain" and o is None:
        s = None
    if o is None and c is None and s is None:
        o = _word(rng, OBJECTS[OBJECT_NAMES[obj]])
    if o is None:
        return " ".join(w for w in (s, c) if w)  # "striped", "red", "striped red"
    words = [w for w in (s, c, o) if w]
    if rng.random() < 0.5 and s is not None and len(words) > 1:
        words = [w for w in (c, o) if w]  # style as a suffix: "a red circle, striped"
        text = " ".join(words) + f", {s}"
    else:
        if rng.random() < 0.5 and s is not None and c is not None:
            words = [c, s, o]
        text = " ".join(words)
    return ("a " + text) if rng.random() < 0.6 else text


def vocabulary() -> list[str]:
    """Every word a caption can use, for the tokenizer."""
    words = {"a", ","}
    for group in (OBJECTS, STYLES):
        for names in group.values():
            words.update(names)
    words.update(COLOUR_NAMES)
    return sorted(words)


def parse_prompt(prompt: str) -> tuple[str | None, str | None, str | None]:
    """The (object, colour, style) a prompt names, as canonical words, or None for each unnamed."""
    tokens = prompt.lower().replace(",", " ").split()
    found: list[str | None] = [None, None, None]
    for token in tokens:
        for name, words in OBJECTS.items():
            if token in words:
                found[0] = name
        if token in COLOURS:
            found[1] = token
        for name, words in STYLES.items():
            if token in words:
                found[2] = name
    return found[0], found[1], found[2]
