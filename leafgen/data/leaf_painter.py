"""Procedural apple leaves: a leaf on a photographic-looking background, with rust and scab marks.

Everything is drawn with vectorised numpy on a 384x256 canvas (Kaggle's 3:2 aspect) in the leaf's own
coordinates: ``t`` runs from the base (0) to the tip (1) along the midrib, ``v`` across it. Each image is a
pure function of its random generator, so a (seed, index) pair always gives the same picture.

What makes the classes separable, and how hard: rust is orange spots with yellow halos; scab is olive-brown
irregular, feathered blotches; multiple_diseases carries at least one mark of each (fewer rust spots than
a rust leaf, sometimes fainter), so a leaf with a few rust spots is rust or multiple_diseases depending on
small dark blotches a classifier must not miss. ``MARKS`` was calibrated with
benchmarks/procedural_difficulty.py (docs/benchmarks.md).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from leafgen import atomic

H, W = 256, 384

# How marks per class are drawn: (rust count range, scab count range, intensity range, size factor).
MARKS = {
    "healthy": ((0, 0), (0, 0), (1.0, 1.0), 1.0),
    "rust": ((3, 14), (0, 0), (0.85, 1.0), 1.0),
    "scab": ((0, 0), (2, 8), (0.85, 1.0), 1.0),
    "multiple_diseases": ((1, 4), (3, 6), (0.85, 1.0), 1.25),
}


def smooth_noise(
    rng: np.random.Generator, cells: tuple[int, int], shape: tuple[int, int] = (H, W)
) -> np.ndarray:
    """Zero-mean, roughly unit-range low-frequency noise: a random grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, size=cells).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize(shape[::-1], Image.BICUBIC))


def _background(rng: np.random.Generator) -> np.ndarray:
    palettes = {
        "foliage": [(0.10, 0.22, 0.07), (0.22, 0.36, 0.12), (0.35, 0.45, 0.2), (0.62, 0.72, 0.82)],
        "ground": [(0.32, 0.24, 0.15), (0.45, 0.37, 0.26), (0.24, 0.3, 0.12), (0.55, 0.5, 0.42)],
        "sky": [(0.62, 0.72, 0.86), (0.85, 0.87, 0.9), (0.2, 0.32, 0.12), (0.45, 0.55, 0.35)],
    }
    palette = np.array(palettes[rng.choice(list(palettes))], dtype=np.float32)
    # The background is out of focus, so it is drawn at quarter resolution and upsampled.
    h, w = H // 4, W // 4
    weights = np.stack([smooth_noise(rng, (3, 4), (h, w)) * 3 for _ in palette], axis=-1)
    weights = np.exp(weights - weights.max(axis=-1, keepdims=True))
    img = (weights / weights.sum(axis=-1, keepdims=True)) @ palette
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(rng.integers(6, 18)):  # out-of-focus shapes: other leaves, branches, light
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 12.5)
        blob = np.clip(r - np.hypot(yy - cy, xx - cx), 0, 1)[..., None]
        img = img * (1 - 0.7 * blob) + 0.7 * blob * palette[rng.integers(len(palette))]
    img = gaussian_filter(img, sigma=(rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), 0))
    small = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.asarray(small.resize((W, H), Image.BICUBIC), dtype=np.float32) / 255


@dataclass
class LeafShape:
    """Geometry of one leaf in canvas pixels."""

    base: np.ndarray  # (x, y) of the petiole joint
    along: np.ndarray  # unit vector base -> tip
    across: np.ndarray  # unit normal
    length: float
    width_ratio: float
    bend: float
    widest: float  # exponent that moves the widest point towards the base
    tip: float
    teeth: float
    asym: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> LeafShape:
        angle = rng.uniform(-0.55, 0.55) + (np.pi if rng.random() < 0.5 else 0.0)
        along = np.array([np.cos(angle), np.sin(angle)])
        length = rng.uniform(250, 330)
        centre = np.array([W / 2, H / 2]) + rng.uniform(-20, 20, size=2)
        return cls(
            base=centre - along * length / 2,
            along=along,
            across=np.array([-along[1], along[0]]),
            length=length,
            width_ratio=rng.uniform(0.42, 0.58),
            bend=rng.uniform(-0.06, 0.06),
            widest=rng.uniform(0.72, 0.95),
            tip=rng.uniform(0.8, 1.1),
            teeth=rng.uniform(34, 50),
            asym=rng.uniform(-0.08, 0.08),
        )

    def midrib(self, t: np.ndarray) -> np.ndarray:
        return self.bend * self.length * np.sin(np.pi * np.clip(t, 0, 1))

    def half_width(self, t: np.ndarray, side: np.ndarray | float) -> np.ndarray:
        tc = np.clip(t, 0, 1)
        profile = np.maximum(np.sin(np.pi * tc**self.widest), 0) ** self.tip
        serration = 1 + 0.03 * ((self.teeth * tc) % 1.0) * (tc > 0.08) * (tc < 0.95)
        inside = (t >= 0) & (t <= 1)
        return inside * self.width_ratio * self.length / 2 * profile * serration * (1 + self.asym * side)

    def to_canvas(self, t: float, s: float) -> np.ndarray:
        """Canvas (x, y) of leaf coordinates t (along) and s in [-1, 1] (across, as a share of half-width)."""
        v = self.midrib(np.float64(t)) + s * self.half_width(np.float64(t), np.sign(s))
        return self.base + self.along * t * self.length + self.across * v


def _leaf(rng: np.random.Generator, shape: LeafShape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(leaf colour image, leaf alpha mask, petiole alpha mask)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    (bx, by), (ax, ay), (nx, ny) = (map(float, vec) for vec in (shape.base, shape.along, shape.across))
    dx, dy = xx - bx, yy - by
    u = dx * ax + dy * ay
    v = dx * nx + dy * ny
    t = u / shape.length
    off = v - shape.midrib(t)
    side = np.sign(off)
    d = np.abs(off)
    h = shape.half_width(t, side)
    mask = np.clip((h - d) / 1.2, 0, 1)
    petiole = np.clip((2.2 - np.abs(v)) / 1.0, 0, 1) * (t > -0.12) * (t < 0.01)

    hue, sat, val = rng.uniform(0.2, 0.3), rng.uniform(0.5, 0.8), rng.uniform(0.38, 0.6)
    base = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)
    tint = np.stack([smooth_noise(rng, (6, 9)) for _ in range(3)], -1) * 0.06
    img = base * (1 + tint)
    s = np.clip(d / np.maximum(h, 1e-3), 0, 1)
    light = 1 + rng.uniform(-0.1, 0.1) * side - 0.12 * s**2  # the two halves catch light differently
    img = img * light[..., None]

    # Veins: the midrib, and lateral veins leaving it at an angle towards the tip, alternating sides.
    mid_w = 2.2 * (1 - 0.6 * np.clip(t, 0, 1))
    vein = np.clip(mid_w - d, 0, 1)
    n_veins = rng.integers(8, 12)
    spacing = shape.length / (n_veins + 1)
    slope = rng.uniform(0.7, 1.2)
    phase = (u - slope * d - 0.6 * d**2 / shape.length) / spacing + 0.5 * (side > 0)
    dist = np.abs(phase - np.round(phase)) * spacing
    lateral = np.clip((0.3 + 1.1 * (1 - s) - dist) / 0.8, 0, 1) * (s < 0.92) * (t > 0.04) * (t < 0.9)
    vein = np.maximum(vein, 0.55 * lateral)
    vein_colour = np.clip(base * 1.35 + np.array([0.06, 0.05, 0.0]), 0, 1)
    img = img * (1 - vein[..., None]) + vein_colour * vein[..., None]

    edge = np.clip(1 - (h - d) / 3, 0, 1) * (mask > 0)
    img = img * (1 - 0.2 * edge[..., None])
    img = img * (1 + 0.05 * smooth_noise(rng, (40, 60))[..., None]) + rng.normal(0, 0.012, img.shape).astype(
        np.float32
    )
    if rng.random() < 0.5:  # glossy highlight
        p = shape.to_canvas(rng.uniform(0.3, 0.7), rng.uniform(-0.5, 0.5))
        glare = np.exp(-(((xx - p[0]) / rng.uniform(20, 50)) ** 2 + ((yy - p[1]) / rng.uniform(10, 30)) ** 2))
        img = img + rng.uniform(0.08, 0.2) * glare[..., None]
    return img, mask, petiole


def _window(p: np.ndarray, radius: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    r = int(np.ceil(radius)) + 2
    y0, y1 = max(int(p[1]) - r, 0), min(int(p[1]) + r + 1, H)
    x0, x1 = max(int(p[0]) - r, 0), min(int(p[0]) + r + 1, W)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    return slice(y0, y1), slice(x0, x1), xx - p[0], yy - p[1]


def _rust_spot(
    img: np.ndarray, rng: np.random.Generator, p: np.ndarray, size: float, strength: float
) -> None:
    r = rng.uniform(4.0, 8.5) * size
    halo = r * rng.uniform(1.7, 2.5)
    sy, sx, dx, dy = _window(p, halo)
    d = np.hypot(dx, dy)
    a_halo = (np.clip((halo - d) / (halo - r), 0, 1) ** 1.5 * 0.75 * strength)[..., None]
    a_core = (np.clip((r - d) / 1.5, 0, 1) * strength)[..., None]
    halo_colour = np.array([0.93, 0.84, 0.3]) * rng.uniform(0.85, 1.05)
    core_colour = np.array([0.93, rng.uniform(0.38, 0.55), rng.uniform(0.05, 0.15)])
    patch = img[sy, sx]
    patch = patch * (1 - a_halo) + halo_colour * a_halo
    patch = patch * (1 - a_core) + core_colour * a_core
    if rng.random() < 0.6:  # dark pycnia in the centre of older lesions
        dots = np.clip((r * 0.35 - d) / 1.0, 0, 1)[..., None] * strength
        patch = patch * (1 - 0.6 * dots)
    img[sy, sx] = patch


def _scab_blotch(
    img: np.ndarray, rng: np.random.Generator, p: np.ndarray, size: float, strength: float
) -> None:
    r = rng.uniform(5.0, 12.0) * size
    sy, sx, dx, dy = _window(p, r * 1.8)
    theta = np.arctan2(dy, dx)
    wobble = sum(rng.uniform(0, 0.3) / k * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
    dn = np.hypot(dx, dy) / (r * (1 + wobble))
    dn = dn + 0.18 * rng.normal(0, 1, dn.shape)  # feathered, velvety edge
    alpha = (np.clip((1 - dn) * r / 2.5, 0, 1) * strength)[..., None]
    margin = (np.clip((1.45 - dn) / 0.45, 0, 1) * 0.25 * strength)[..., None]
    colour = np.array([0.34, 0.31, 0.13]) * rng.uniform(0.6, 1.0)
    texture = 1 + 0.25 * rng.normal(0, 1, alpha.shape)
    patch = img[sy, sx]
    patch = patch * (1 - margin) + np.array([0.55, 0.55, 0.2]) * margin
    img[sy, sx] = patch * (1 - alpha) + colour * texture * alpha


Marks = tuple[tuple[int, int], tuple[int, int], tuple[float, float], float]

# Two kinds of multiple_diseases leaf, far apart within the class's range: many rust spots and one scab
# blotch, or one rust spot and many scab blotches. One identifier per cluster is measured on them
# (tests/diffusion/finetune/test_dreambooth_effect.py, benchmarks/cluster_tokens.py).
KINDS: dict[str, Marks] = {
    "rust-dominant": ((6, 10), (1, 1), (0.85, 1.0), 1.25),
    "scab-dominant": ((1, 1), (5, 8), (0.85, 1.0), 1.25),
}


def paint_leaf(label: str, rng: np.random.Generator, marks: Marks | None = None) -> np.ndarray:
    """An RGB float image (H, W, 3) in [0, 1] of one leaf of class ``label``; ``marks`` replaces the
    class's entry of ``MARKS`` (a kind of leaf of its own, e.g. mostly rust spots with one scab blotch)."""
    background = _background(rng)
    shape = LeafShape.sample(rng)
    leaf, mask, petiole = _leaf(rng, shape)

    (rust_lo, rust_hi), (scab_lo, scab_hi), (str_lo, str_hi), size = marks or MARKS[label]
    marks = ["rust"] * int(rng.integers(rust_lo, rust_hi + 1)) + ["scab"] * int(
        rng.integers(scab_lo, scab_hi + 1)
    )
    for kind in rng.permutation(marks):
        p = shape.to_canvas(rng.uniform(0.1, 0.9), rng.uniform(-0.8, 0.8))
        draw = _rust_spot if kind == "rust" else _scab_blotch
        draw(leaf, rng, p, size * rng.uniform(0.8, 1.2), rng.uniform(str_lo, str_hi))
    for _ in range(rng.integers(0, 6)):  # dust specks on every class, so "any dark dot" is not a cue
        p = shape.to_canvas(rng.uniform(0.05, 0.95), rng.uniform(-0.9, 0.9))
        sy, sx, dx, dy = _window(p, 2)
        a = np.clip((rng.uniform(0.8, 1.6) - np.hypot(dx, dy)) / 0.7, 0, 1)[..., None] * 0.6
        leaf[sy, sx] = leaf[sy, sx] * (1 - a) + rng.uniform(0.15, 0.45) * a

    # The leaf's soft shadow on the background, then the composite.
    offset = rng.integers(-8, 9, size=2)
    shadow = np.roll(mask, tuple(offset), axis=(0, 1))[::4, ::4]
    shadow = np.asarray(Image.fromarray(gaussian_filter(shadow, 1.25)).resize((W, H), Image.BILINEAR))
    img = background * (1 - 0.35 * shadow[..., None])
    stem = np.array([0.42, 0.4, 0.18])
    img = img * (1 - petiole[..., None]) + stem * petiole[..., None]
    img = img * (1 - mask[..., None]) + leaf * mask[..., None]

    # Lighting and camera: exposure, white balance, a light gradient, sensor noise, sometimes soft focus.
    ramp = np.linspace(-1, 1, W)[None, :] * rng.uniform(-1, 1) + np.linspace(-1, 1, H)[:, None] * rng.uniform(
        -1, 1
    )
    gain = rng.uniform(0.8, 1.15) * (1 + 0.12 * ramp)
    wb = np.array([1 + (k := rng.uniform(-0.06, 0.06)), 1.0, 1 - k])
    img = img * (gain[..., None] * wb).astype(np.float32) + rng.normal(0, 0.01, img.shape).astype(np.float32)
    if rng.random() < 0.3:
        img = gaussian_filter(img, sigma=(0.7, 0.7, 0))
    return np.clip(img, 0, 1).astype(np.float32)


def render(label: str, rng: np.random.Generator, width: int, marks: Marks | None = None) -> Image.Image:
    """A PIL image of width ``width`` (height 2/3 of it) of one leaf of class ``label`` (``marks``: see
    :func:`paint_leaf`)."""
    arr = (paint_leaf(label, rng, marks) * 255 + 0.5).astype(np.uint8)
    height = max(1, round(width * H / W))
    image = Image.fromarray(arr).resize((width, height), Image.LANCZOS)
    if width > W:
        # Upsampled pictures are unnaturally smooth; a camera's sensor noise at full resolution gives them
        # the fine detail (and the JPEG size and decoding cost) of real photos.
        noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 4.0, (height, width, 3)).astype(np.int16)
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return image


def paint_kinds(folder: Path, per_kind: int = 16, width: int = 192) -> tuple[list[Path], np.ndarray]:
    """``per_kind`` multiple_diseases leaves of each of ``KINDS`` as PNGs in ``folder`` (the same pictures on
    every call), and each one's kind (its index in ``KINDS``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, kinds = [], []
    for kind, marks in enumerate(KINDS.values()):
        for i in range(per_kind):
            paths.append(folder / f"kind{kind}_{i}.png")
            kinds.append(kind)
            if not paths[-1].is_file():  # a rerun keeps what an earlier call wrote
                image = render("multiple_diseases", np.random.default_rng([77, kind, i]), width, marks)
                with atomic.atomic_path(paths[-1]) as tmp:
                    image.save(tmp, format="PNG")
    return paths, np.array(kinds)
