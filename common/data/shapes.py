"""Shapes: a procedurally generated 10-class image benchmark, embedded (numpy, in memory, seconds).

Each image shows one *main* shape of the labelled class, drawn at a random position, scale, rotation and colour
over a random background (noise, gradient, stripes or a smooth colour texture), plus 0 to ``distractors`` smaller
shapes of other classes, each in front of or behind the main one. The rule defining the label: it is the class of
the largest shape; a distractor's radius is at most ``distractor_scale[1]`` (< 1) times the main shape's, so the
main shape stays the largest even when a distractor in front hides part of it. Pixel noise comes last.

Shapes are rasterised from signed distance functions (SDFs) with a one-pixel soft edge, which anti-aliases them
without supersampling. All scene parameters are drawn in units of the image side before any pixel is drawn, so
the same ``data_seed`` gives the same scenes at any resolution (only the pixel noise differs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.data.bundle import DataBundle
from common.data.context import BuildContext
from common.data.images import image_bundle
from common.data.seeds import derive_seed

CLASSES = (
    "circle",
    "square",
    "triangle",
    "hexagon",
    "star",
    "plus",
    "ring",
    "crescent",
    "arrow",
    "ellipse",
)

# Shape geometry in local units: each shape spans a disc of radius about 1, which the scene's radius maps to
# pixels. Areas differ (arrow 0.97 to circle 2.54) by less than the random scale does (2.25x), so area alone does
# not give the class away.
_CIRCLE_R = 0.9
_SQUARE_HALF = 0.75
_TRIANGLE_R = 1.05  # circumradius
_HEXAGON_R = 0.95
_STAR_R, _STAR_INNER = 1.05, 0.45
_PLUS_LONG, _PLUS_SHORT = 0.95, 0.3
_RING_MID, _RING_HALF = 0.75, 0.2
_CRESCENT_R, _CRESCENT_CUT_R, _CRESCENT_SHIFT = 0.95, 0.8, 0.45
_ARROW_SHAFT_HALF, _ARROW_HEAD_BASE, _ARROW_HEAD_HALF = 0.2, 0.15, 0.6
_ELLIPSE_A, _ELLIPSE_B = 1.0, 0.45

# Images rendered together: bounds the float working memory (about 40 MB at 32x32).
_CHUNK = 1024
# Rejection rounds when drawing colours far enough from the background; the rare leftovers are kept.
_COLOUR_TRIES = 32
_BACKGROUNDS = 4  # noise, linear gradient, stripes, smooth texture
_TEXTURE_GRID = 5  # control points per side of the smooth texture
_TRAIN, _VAL, _TEST = 1, 2, 3


def _regular_polygon(u: np.ndarray, v: np.ndarray, n: int, circumradius: float) -> np.ndarray:
    # fold the angle into one edge's sector: the distance to that edge's line is exact inside
    r = np.hypot(u, v)
    sector = 2 * np.pi / n
    phi = np.mod(np.arctan2(v, u) + sector / 2, sector) - sector / 2
    return r * np.cos(phi) - circumradius * math.cos(np.pi / n)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # fold into the half-sector [0, pi/5] between a tip (on the x axis) and an inner vertex; the star there is the
    # origin's side of the line tip -> inner vertex
    r = np.hypot(u, v)
    sector = 2 * np.pi / 5
    phi = np.abs(np.mod(np.arctan2(v, u) + sector / 2, sector) - sector / 2)
    c, s = math.cos(np.pi / 5), math.sin(np.pi / 5)
    nx, ny = _STAR_INNER * s, _STAR_R - _STAR_INNER * c
    norm = math.hypot(nx, ny)
    return ((r * np.cos(phi) - _STAR_R) * nx + r * np.sin(phi) * ny) / norm


def _box(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    return np.maximum(np.abs(u) - half_u, np.abs(v) - half_v)


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # shaft from x=-1 into the head's base, head a triangle with its tip at (1, 0)
    shaft_end = _ARROW_HEAD_BASE + 0.05
    shaft = _box(u + (1 - shaft_end) / 2, v, (1 + shaft_end) / 2, _ARROW_SHAFT_HALF)
    nx, ny = _ARROW_HEAD_HALF, 1 - _ARROW_HEAD_BASE
    side = ((u - 1) * nx + np.abs(v) * ny) / math.hypot(nx, ny)
    head = np.maximum(_ARROW_HEAD_BASE - u, side)
    return np.minimum(shaft, head)


def shape_sdf(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside, local units) of shape ``kind`` (an index of `CLASSES`) at ``(u, v)``.

    Exact or close near the edges, where the one-pixel soft edge reads it (the ellipse's is shrunk towards its
    ends, a slightly softer edge there); not a true distance far from the edges.
    """
    name = CLASSES[kind]
    if name == "circle":
        return np.hypot(u, v) - _CIRCLE_R
    if name == "square":
        return _box(u, v, _SQUARE_HALF, _SQUARE_HALF)
    if name == "triangle":
        return _regular_polygon(u, v, 3, _TRIANGLE_R)
    if name == "hexagon":
        return _regular_polygon(u, v, 6, _HEXAGON_R)
    if name == "star":
        return _star(u, v)
    if name == "plus":
        return np.minimum(
            _box(u, v, _PLUS_LONG, _PLUS_SHORT),
            _box(u, v, _PLUS_SHORT, _PLUS_LONG),
        )
    if name == "ring":
        return np.abs(np.hypot(u, v) - _RING_MID) - _RING_HALF
    if name == "crescent":
        return np.maximum(np.hypot(u, v) - _CRESCENT_R, _CRESCENT_CUT_R - np.hypot(u - _CRESCENT_SHIFT, v))
    if name == "arrow":
        return _arrow(u, v)
    if name == "ellipse":
        return (np.hypot(u / _ELLIPSE_A, v / _ELLIPSE_B) - 1) * _ELLIPSE_B
    raise ValueError(f"unknown shape kind {kind}")


@dataclass(frozen=True)
class ShapesSpec:
    """The difficulty knobs (dataset config keys of the same names).

    Attributes:
        noise: Std of the Gaussian pixel noise added last (pixel values in [0, 1]).
        distractors: Most distractor shapes per image; each image has 0..distractors, uniformly.
        scale: Range of the main shape's radius, as a fraction of the image side.
        distractor_scale: Range of a distractor's radius relative to the main shape's (upper end < 1).
        contrast: Least RGB distance of a shape's colour from the background's colours (and of a distractor's
            from the main shape's colour).
        background_contrast: Scale in [0, 1] of the difference between the two colours of a gradient, stripe
            or texture background (0: flat backgrounds).
    """

    noise: float = 0.03
    distractors: int = 2
    scale: tuple[float, float] = (0.28, 0.42)
    distractor_scale: tuple[float, float] = (0.3, 0.55)
    contrast: float = 0.4
    background_contrast: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 0.5:
            raise ValueError(f"shapes scale must satisfy 0 < min <= max <= 0.5, got {list(self.scale)}")
        lo, hi = self.distractor_scale
        if not 0 < lo <= hi < 1:
            # the label is the largest shape: a distractor as large as the main one would make it ambiguous
            raise ValueError(
                f"shapes distractor_scale must satisfy 0 < min <= max < 1, got {list(self.distractor_scale)}"
            )
        if self.distractors < 0 or self.noise < 0 or not 0 <= self.contrast < 1:
            raise ValueError(f"shapes needs distractors >= 0, noise >= 0 and 0 <= contrast < 1, got {self}")
        if not 0 <= self.background_contrast <= 1:
            raise ValueError(f"shapes background_contrast must be in [0, 1], got {self.background_contrast}")


@dataclass
class Scenes:
    """Parameters of ``n`` scenes, in units of the image side. Slot 0 is the main shape, slots 1.. distractors.

    Attributes:
        labels: (n,) class of the main shape.
        kinds: (n, S) shape class per slot.
        active: (n, S) whether the slot is drawn (slot 0 always).
        front: (n, S) whether a distractor is drawn over the main shape (else under it).
        centre: (n, S, 2) centre (x, y) in [0, 1].
        radius: (n, S) radius as a fraction of the image side.
        angle: (n, S) rotation in radians.
        colour: (n, S, 3) RGB in [0, 1].
        background: (n,) background type (0 noise, 1 gradient, 2 stripes, 3 texture).
        bg_colours: (n, 2, 3) the background's two colours.
        bg_angle, bg_freq, bg_phase: (n,) direction, stripe frequency (cycles per side), stripe phase.
        texture: (n, 3, G, G) control points of the smooth texture in [0, 1].
    """

    labels: np.ndarray
    kinds: np.ndarray
    active: np.ndarray
    front: np.ndarray
    centre: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    colour: np.ndarray
    background: np.ndarray
    bg_colours: np.ndarray
    bg_angle: np.ndarray
    bg_freq: np.ndarray
    bg_phase: np.ndarray
    texture: np.ndarray


def _distance_to_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from colours ``p`` (n, 3) to the segments ``a``-``b`` (n, 3) in RGB space."""
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=-1)


def draw_scenes(
    n: int, rng: np.random.Generator, spec: ShapesSpec, num_classes: int = len(CLASSES)
) -> Scenes:
    """``n`` random scenes with balanced, shuffled labels in ``range(num_classes)``."""
    slots = 1 + spec.distractors
    labels = rng.permutation(np.arange(n) % num_classes)
    # distractors are of any other kind (also kinds beyond num_classes when fewer classes are used)
    kinds = np.empty((n, slots), dtype=np.int64)
    kinds[:, 0] = labels
    kinds[:, 1:] = (labels[:, None] + rng.integers(1, len(CLASSES), (n, slots - 1))) % len(CLASSES)
    count = rng.integers(0, spec.distractors + 1, n)
    active = np.arange(slots)[None, :] <= count[:, None]
    front = rng.random((n, slots)) < 0.5
    front[:, 0] = False

    radius = np.empty((n, slots))
    radius[:, 0] = rng.uniform(*spec.scale, n)
    radius[:, 1:] = radius[:, :1] * rng.uniform(*spec.distractor_scale, (n, slots - 1))
    # the main shape lies (almost) inside the frame; distractors anywhere, possibly over the main shape or cut
    margin = 0.9 * radius[:, 0]
    centre = np.empty((n, slots, 2))
    centre[:, 0] = margin[:, None] + rng.random((n, 2)) * (1 - 2 * margin[:, None])
    centre[:, 1:] = rng.uniform(0.05, 0.95, (n, slots - 1, 2))
    angle = rng.uniform(0, 2 * np.pi, (n, slots))

    background = rng.integers(0, _BACKGROUNDS, n)
    bg_colours = rng.random((n, 2, 3))
    # the second colour within background_contrast of the first, channel by channel: a texture weaker than the
    # shapes' edges (at 1, two independent colours)
    offset = (bg_colours[:, 1] - bg_colours[:, 0]) * spec.background_contrast
    bg_colours[:, 1] = bg_colours[:, 0] + offset
    # a noise background has one colour: make the segment a point
    bg_colours[background == 0, 1] = bg_colours[background == 0, 0]
    bg_angle = rng.uniform(0, 2 * np.pi, n)
    bg_freq = rng.uniform(1.5, 5.0, n)
    bg_phase = rng.uniform(0, 2 * np.pi, n)
    texture = rng.random((n, 3, _TEXTURE_GRID, _TEXTURE_GRID))

    colour = rng.random((n, slots, 3))
    for slot in range(slots):
        for _ in range(_COLOUR_TRIES):
            bad = _distance_to_segment(colour[:, slot], bg_colours[:, 0], bg_colours[:, 1]) < spec.contrast
            if slot > 0:
                bad |= np.linalg.norm(colour[:, slot] - colour[:, 0], axis=-1) < spec.contrast
            if not bad.any():
                break
            colour[bad, slot] = rng.random((int(bad.sum()), 3))
    return Scenes(
        labels=labels,
        kinds=kinds,
        active=active,
        front=front,
        centre=centre,
        radius=radius,
        angle=angle,
        colour=colour,
        background=background,
        bg_colours=bg_colours,
        bg_angle=bg_angle,
        bg_freq=bg_freq,
        bg_phase=bg_phase,
        texture=texture,
    )


def _interpolation_matrix(size: int, points: int) -> np.ndarray:
    """(size, points) bilinear weights mapping ``points`` control values to ``size`` pixel centres."""
    pos = ((np.arange(size) + 0.5) / size) * (points - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, points - 2)
    frac = pos - lo
    m = np.zeros((size, points))
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def _backgrounds(scenes: Scenes, idx: np.ndarray, size: int) -> np.ndarray:
    """(len(idx), 3, size, size) float32 background images in [0, 1], before noise."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    kind = scenes.background[idx]
    cos = np.cos(scenes.bg_angle[idx]).astype(np.float32)[:, None, None]
    sin = np.sin(scenes.bg_angle[idx]).astype(np.float32)[:, None, None]
    # coordinate along the background's direction, from the image centre: within [-0.71, 0.71]
    along = grid[None, None, :] * cos + grid[None, :, None] * sin
    t = np.zeros((len(idx), 1, size, size), dtype=np.float32)
    gradient = kind == 1
    t[gradient, 0] = np.clip(0.5 + along[gradient] / np.float32(math.sqrt(2)), 0, 1)
    stripes = kind == 2
    freq = scenes.bg_freq[idx][stripes].astype(np.float32)[:, None, None]
    phase = scenes.bg_phase[idx][stripes].astype(np.float32)[:, None, None]
    t[stripes, 0] = 0.5 + 0.5 * np.sin(np.float32(2 * np.pi) * freq * along[stripes] + phase)
    c0 = scenes.bg_colours[idx, 0].astype(np.float32)[:, :, None, None]
    c1 = scenes.bg_colours[idx, 1].astype(np.float32)[:, :, None, None]
    textured = kind == 3
    if textured.any():
        # a smooth field per channel, between the two colours channel by channel
        m = _interpolation_matrix(size, _TEXTURE_GRID).astype(np.float32)
        t = np.repeat(t, 3, axis=1)
        t[textured] = m @ scenes.texture[idx][textured].astype(np.float32) @ m.T
    return c0 + t * (c1 - c0)


def _draw_slot(
    img: np.ndarray, scenes: Scenes, idx: np.ndarray, slot: int, size: int, where: np.ndarray
) -> None:
    """Composite slot ``slot`` of the scenes ``idx[where]`` onto ``img`` (len(idx), 3, size, size), in place."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    for kind in range(len(CLASSES)):
        sel = np.flatnonzero(where & scenes.active[idx, slot] & (scenes.kinds[idx, slot] == kind))
        if not len(sel):
            continue
        rows = idx[sel]
        radius = scenes.radius[rows, slot].astype(np.float32)[:, None, None]
        cos = np.cos(scenes.angle[rows, slot]).astype(np.float32)[:, None, None]
        sin = np.sin(scenes.angle[rows, slot]).astype(np.float32)[:, None, None]
        dx = grid[None, None, :] - scenes.centre[rows, slot, 0].astype(np.float32)[:, None, None]
        dy = grid[None, :, None] - scenes.centre[rows, slot, 1].astype(np.float32)[:, None, None]
        u = (cos * dx + sin * dy) / radius
        v = (cos * dy - sin * dx) / radius
        # soft edge one pixel wide: local distance * radius * size is the distance in pixels
        alpha = np.clip(0.5 - shape_sdf(kind, u, v) * (radius * size), 0, 1)[:, None]
        colour = scenes.colour[rows, slot].astype(np.float32)[:, :, None, None]
        img[sel] += alpha * (colour - img[sel])


def render(scenes: Scenes, size: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """The scenes as (n, 3, size, size) uint8 images (pixel noise of std ``noise`` drawn from ``rng``)."""
    n, slots = scenes.kinds.shape
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        idx = np.arange(start, min(start + _CHUNK, n))
        img = _backgrounds(scenes, idx, size)
        front = scenes.front[idx]
        # distractors behind the main shape, the main shape, then the distractors in front
        for slot in range(1, slots):
            _draw_slot(img, scenes, idx, slot, size, ~front[:, slot])
        _draw_slot(img, scenes, idx, 0, size, np.ones(len(idx), dtype=bool))
        for slot in range(1, slots):
            _draw_slot(img, scenes, idx, slot, size, front[:, slot])
        if noise > 0:
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
        img *= 255
        np.rint(img, out=img)
        out[idx] = np.clip(img, 0, 255, out=img)
    return out


def generate(
    n: int, seed: int, size: int = 32, spec: ShapesSpec | None = None, num_classes: int = len(CLASSES)
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, 3, size, size) uint8 and their labels (n,) int64, a pure function of the arguments."""
    spec = spec or ShapesSpec()
    rng = np.random.default_rng(seed)
    scenes = draw_scenes(n, rng, spec, num_classes)
    return render(scenes, size, rng, spec.noise), scenes.labels.astype(np.int64)


def spec_from(ctx: BuildContext) -> ShapesSpec:
    """The difficulty knobs of the dataset config."""
    default = ShapesSpec()
    return ShapesSpec(
        noise=float(ctx.get("noise", default.noise)),
        distractors=int(ctx.get("distractors", default.distractors)),
        scale=tuple(float(s) for s in ctx.get("scale", default.scale)),
        distractor_scale=tuple(float(s) for s in ctx.get("distractor_scale", default.distractor_scale)),
        contrast=float(ctx.get("contrast", default.contrast)),
        background_contrast=float(ctx.get("background_contrast", default.background_contrast)),
    )


def build_shapes(ctx: BuildContext) -> DataBundle:
    """Shapes train/val/test splits, generated in memory from ``data_seed`` (independent of the run seed).

    Config keys: ``train_size`` (20000), ``val_size`` (2000; 0: no val split), ``test_size`` (2000),
    ``data_seed`` (0), ``num_classes`` (10: the first ``num_classes`` of `CLASSES`), the `ShapesSpec` knobs,
    plus the common loader keys. Images are rendered at the requested size (the network's minimum, else the
    config's ``image_size``, else 32) and standardised with the train split's per-channel statistics.
    """
    num_classes = int(ctx.get("num_classes", len(CLASSES)))
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"shapes num_classes must be in 2..{len(CLASSES)}, got {num_classes}")
    size = int(ctx.image_size or ctx.get("image_size", 32))
    if size < 8:
        raise ValueError(f"shapes image_size must be at least 8, got {size}")
    spec = spec_from(ctx)
    data_seed = int(ctx.get("data_seed", 0))
    sizes = {
        "train": int(ctx.get("train_size", 20000)),
        "val": int(ctx.get("val_size", 2000)),
        "test": int(ctx.get("test_size", 2000)),
    }
    if sizes["train"] <= 0 or sizes["test"] <= 0 or sizes["val"] < 0:
        raise ValueError(f"shapes train_size and test_size must be positive and val_size >= 0, got {sizes}")
    # one independent stream per split: changing one split's size leaves the others as they were
    streams = {"train": _TRAIN, "val": _VAL, "test": _TEST}
    splits = {
        split: generate(n, derive_seed(data_seed, streams[split]), size, spec, num_classes)
        for split, n in sizes.items()
        if n > 0
    }
    bundle = image_bundle(
        ctx,
        train=splits["train"],
        val=splits.get("val"),
        carve_val=False,
        test=splits["test"],
        num_classes=num_classes,
        input_scale=1 / 255,
    )
    bundle.meta["classes"] = list(CLASSES[:num_classes])
    return bundle
