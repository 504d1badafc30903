"""Grayscale images of hot-rolled steel strip, with the six NEU surface-defect classes.

The industrial task "steel-defects": a camera over a hot-rolled strip takes ``SIZE`` x
``SIZE`` grayscale patches; a classifier tells ``CLASSES`` apart: 0 defect-free and the six
defect classes of the NEU surface defect database (Song & Yan 2013): 1 crazing, 2 inclusion,
3 patches, 4 pitted surface, 5 rolled-in scale, 6 scratches. Images are generated
procedurally (vectorized numpy, no download), deterministic in the seed. Pixel values are
reflectance-like gray levels in [0, 1]; the strip rolls along x (image columns).

Coordinates are in pixels: ``x`` is the column (rolling direction), ``y`` the row, both in
``[0, SIZE)``. ``U(a, b)`` is uniform, ``N(m, s)`` normal, ``U{a..b}`` a uniform integer;
every draw is independent per image unless said otherwise.

Surface (every class)
---------------------
::

    surface = level + shading + grain + mottle + defect

* ``level ~ U(0.42, 0.58)``: the strip's gray level in this image.
* ``shading = gx (x / SIZE - 0.5) + gy (y / SIZE - 0.5)``, ``gx, gy ~ U(-0.08, 0.08)``:
  uneven illumination.
* ``grain``: white noise smoothed by an anisotropic Gaussian of standard deviation
  ``grain_length_px`` along x and ``GRAIN_WIDTH_PX = 0.6`` along y, rescaled to standard
  deviation ``grain_contrast``: the fine texture the rolls leave, elongated along rolling.
* ``mottle``: white noise smoothed by a Gaussian of 4 px, rescaled to standard deviation
  ``MOTTLE = 0.02``: slow variation of the oxide layer.

Defects
-------
A *stroke* from ``(x0, y0)`` to ``(x1, y1)`` with width ``w`` and amplitude ``a`` adds
``a exp(-d^2 / (2 w^2))`` at each pixel, ``d`` being the pixel's distance to the segment (a
dot when the ends coincide). Negative amplitudes are dark (pits, cracks, oxide), positive
ones bright (bare metal). Per class:

* **crazing**: a network of fine cracks. ``U{8..14}`` cell centres uniform over the image
  (plus a 4 px margin) tile it into Voronoi cells; a crack runs along every cell border:
  ``-a exp(-(d2 - d1)^2 / (2 w^2)) m``, with ``d1, d2`` the distances to the nearest and
  second-nearest centre, measured after warping the coordinates by a smooth random field
  (4 px Gaussian noise, amplitude 1.5 px) so borders wander; ``w ~ U(0.6, 0.9)`` px,
  ``a ~ U(0.12, 0.2)``, and ``m`` in [0.3, 1] a smooth random mask that lets some cracks
  fade.
* **inclusion**: ``U{1..3}`` dark streaks of foreign material rolled into the strip, along
  the rolling direction: angle ``N(0, 10 deg)``, length ``U(6, 16)`` px, width
  ``U(0.8, 1.5)`` px, amplitude ``-U(0.2, 0.35)``, centres in the central 80 % of the image.
* **patches**: ``U{1..3}`` dark blotches: Gaussian blobs centred in the central 60 %, of
  standard deviation ``U(3, 7)`` px along x and ``U(2.5, 6)`` px along y, amplitude
  ``-U(0.15, 0.3)`` each, modulated by ``1 + 0.5 n`` with ``n`` a smooth (4 px) random
  field of unit standard deviation, so the edges are irregular; the summed darkening is
  capped at 0.4.
* **pitted surface**: ``U{12..30}`` pits (dots) of width ``U(0.5, 1.0)`` px and amplitude
  ``-U(0.2, 0.4)``, scattered ``N(centre, s)`` around one cluster centre uniform in the
  central 60 %, ``s ~ U(4, 9)`` px per image.
* **rolled-in scale**: ``U{8..20}`` flakes of oxide pressed into the surface: strokes of
  length ``U(2, 6)`` px, width ``U(0.7, 1.4)`` px, angle ``N(0, 20 deg)``, amplitude
  ``-U(0.15, 0.3)`` (dark, 70 %) or ``+U(0.15, 0.3)`` (bright flake edge, 30 %), in a band
  along the rolling direction: ``x ~ U(0, SIZE)``, ``y ~ N(band, U(3, 7))``, band centre
  uniform in the central 60 %.
* **scratches**: ``U{1..2}`` long straight bright lines (bare metal): angle ``U(0, 180
  deg)``, length ``U(18, 40)`` px (they may leave the image), width ``U(0.5, 0.8)`` px,
  amplitude ``+U(0.2, 0.35)``, centres in the central 60 %.

Camera (per plant)
------------------
A plant's camera turns the surface into the image::

    image = clip(blur(gain * surface + offset, blur_px) + N(0, noise), 0, 1)

``plant_camera(shift, rng)`` draws it once per plant, with ``s = shift`` in [0, 1]::

    gain            = 1 + s U(-0.3, 0.3)     exposure
    offset          = s U(-0.1, 0.1)         black level
    blur_px         = 0.8 s                  Gaussian PSF standard deviation (focus)
    noise           = 0.015 (1 + s)          sensor noise standard deviation
    grain_contrast  = 0.04 (1 + s)           texture of the plant's rolls
    grain_length_px = 1.5 (1 + s)

so ``shift = 0`` is a sharp, calibrated camera and ``shift = 1`` a blurred, noisier one
over a coarser strip texture. Blur pads by edge replication, so borders are not wrapped.

Class balance
-------------
``generate_plant`` makes the classes of a plant balanced: counts differ by at most one
(``n // 7`` or ``n // 7 + 1`` each, the lower class indices taking the extras), shuffled.
Its stream is ``np.random.default_rng([seed, 7, plant_index])``: the camera is drawn first,
then the labels, then the images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from hierfl.data.partition import class_indices
from hierfl.errors import DataError

SIZE = 32
CLASSES = (
    "defect-free",
    "crazing",
    "inclusion",
    "patches",
    "pitted-surface",
    "rolled-in-scale",
    "scratches",
)
DEFECT_FREE, CRAZING, INCLUSION, PATCHES, PITTED_SURFACE, ROLLED_IN_SCALE, SCRATCHES = range(
    len(CLASSES)
)

GRAIN_WIDTH_PX = 0.6
MOTTLE = 0.02
SMOOTH_PX = 4.0
_GENERATE = 7  # purpose of the plant's numpy stream: default_rng([seed, _GENERATE, plant_index])


@dataclasses.dataclass(frozen=True)
class Camera:
    """A plant's camera and strip texture (see the module docstring for where each enters).

    Attributes:
      gain: multiplies the surface's gray level (exposure).
      offset: added after the gain (black level).
      blur_px: standard deviation of the Gaussian point-spread function, in pixels; 0 = sharp.
      noise: standard deviation of the additive sensor noise.
      grain_contrast: standard deviation of the strip's fine texture.
      grain_length_px: correlation length of the texture along the rolling direction, in pixels.
    """

    gain: float = 1.0
    offset: float = 0.0
    blur_px: float = 0.0
    noise: float = 0.015
    grain_contrast: float = 0.04
    grain_length_px: float = 1.5


def plant_camera(shift: float, rng: np.random.Generator) -> Camera:
    """A plant's camera for feature-shift severity ``shift`` in [0, 1] (formulas in the module docstring)."""
    return Camera(
        gain=1.0 + shift * rng.uniform(-0.3, 0.3),
        offset=shift * rng.uniform(-0.1, 0.1),
        blur_px=0.8 * shift,
        noise=0.015 * (1 + shift),
        grain_contrast=0.04 * (1 + shift),
        grain_length_px=1.5 * (1 + shift),
    )


def render_images(
    rng: np.random.Generator, labels: np.ndarray, camera: Camera = Camera(), size: int = SIZE
) -> np.ndarray:
    """One image per label: the surface, its defect, then the camera.

    Args:
      rng: the source of all randomness; the result is a function of its state.
      labels: int array [N] of class indices into ``CLASSES``.
      camera: the plant's camera and texture.
      size: image height and width in pixels.

    Returns:
      float32 array [N, size, size] of gray levels in [0, 1].
    """
    labels = class_indices(labels, len(CLASSES))
    if size < 8:
        raise DataError(f"images need at least 8 x 8 pixels to hold a defect, got size {size}")
    surface = _background(rng, len(labels), camera, size)
    for cls, draw in _DEFECTS.items():
        members = np.flatnonzero(labels == cls)
        if len(members):
            surface[members] += draw(rng, len(members), size)
    image = _blur(camera.gain * surface + camera.offset, camera.blur_px, camera.blur_px)
    image += camera.noise * rng.standard_normal(image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def generate_plant(
    seed: int,
    plant_index: int,
    num_images: int,
    shift: float,
    size: int = SIZE,
    classes: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The labelled images of one plant: its camera (from ``shift``), balanced classes, shuffled.

    ``classes`` (indices into ``CLASSES``, default all) limits the plant to those classes,
    balanced among themselves; with all of them the images are the same as with None.

    Depends only on ``(seed, plant_index)`` and the sizes: the plant's stream is
    ``np.random.default_rng([seed, 7, plant_index])``, independent of how many plants exist.

    Returns:
      ``(x, y)``: x float32 [num_images, size, size] in [0, 1]; y int32 [num_images].
    """
    if seed < 0 or plant_index < 0:
        raise DataError(f"seed and plant_index must be non-negative, got {seed} and {plant_index}")
    if num_images < 1:
        raise DataError(f"a plant needs at least one image, got {num_images}")
    if not 0.0 <= shift <= 1.0:
        raise DataError(f"shift is a plant's severity in [0, 1], got {shift}")
    rng = np.random.default_rng([seed, _GENERATE, plant_index])
    camera = plant_camera(shift, rng)
    kinds = np.arange(len(CLASSES)) if classes is None else np.asarray(classes, np.int64)
    if kinds.size == 0 or kinds.min() < 0 or kinds.max() >= len(CLASSES):
        raise DataError(
            f"classes must be indices into CLASSES (0..{len(CLASSES) - 1}), got {classes}"
        )
    y = rng.permutation(kinds[np.arange(num_images) % len(kinds)]).astype(np.int32)
    return render_images(rng, y, camera, size), y


# --- surface -----------------------------------------------------------------------------


def _background(rng: np.random.Generator, n: int, camera: Camera, size: int) -> np.ndarray:
    """level + shading + grain + mottle, float64 [n, size, size]."""
    coord = np.arange(size) / size - 0.5
    level = rng.uniform(0.42, 0.58, (n, 1, 1))
    gx, gy = rng.uniform(-0.08, 0.08, (2, n, 1, 1))
    shading = gx * coord[None, None, :] + gy * coord[None, :, None]
    grain = camera.grain_contrast * _unit_field(
        rng, n, size, camera.grain_length_px, GRAIN_WIDTH_PX
    )
    mottle = MOTTLE * _unit_field(rng, n, size, SMOOTH_PX, SMOOTH_PX)
    return level + shading + grain + mottle


def _unit_field(
    rng: np.random.Generator, n: int, size: int, sigma_x: float, sigma_y: float
) -> np.ndarray:
    """Smooth Gaussian noise [n, size, size], each image rescaled to mean 0 and standard deviation 1.

    White noise filtered by a Gaussian of standard deviation ``sigma_x`` (along x) and
    ``sigma_y`` pixels, as a product in the Fourier domain: the field is periodic, which a
    stationary noise field may be, and costs one FFT whatever the sigmas.
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    transfer = np.exp(-2 * np.pi**2 * ((sigma_x * fx) ** 2 + (sigma_y * fy) ** 2))
    field = np.fft.irfft2(
        np.fft.rfft2(rng.standard_normal((n, size, size))) * transfer, s=(size, size)
    )
    field -= field.mean(axis=(1, 2), keepdims=True)
    return field / (field.std(axis=(1, 2), keepdims=True) + 1e-12)


def _blur(images: np.ndarray, sigma_x: float, sigma_y: float) -> np.ndarray:
    """Separable Gaussian blur of [n, H, W] (std ``sigma_x`` along W, ``sigma_y`` along H), edges replicated."""
    for axis, sigma in ((2, sigma_x), (1, sigma_y)):
        if sigma <= 0:
            continue
        radius = max(1, math.ceil(3 * sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps /= taps.sum()
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(images, pad, mode="edge")
        length = images.shape[axis]
        images = sum(
            w * np.take(padded, np.arange(i, i + length), axis=axis) for i, w in enumerate(taps)
        )
    return images


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x [1, 1, size], y [1, size, 1]) for broadcasting over [n, size, size]."""
    axis = np.arange(size, dtype=np.float64)
    return axis[None, None, :], axis[None, :, None]


def _strokes(size: int, x0, y0, x1, y1, width, amplitude) -> np.ndarray:
    """Sum of strokes (see the module docstring); every argument [n, K], amplitude 0 = absent."""
    px, py = _grid(size)
    image = np.zeros((x0.shape[0], size, size))
    for k in range(x0.shape[1]):
        ax, ay = x0[:, k, None, None], y0[:, k, None, None]
        dx, dy = x1[:, k, None, None] - ax, y1[:, k, None, None] - ay
        t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
        d2 = (px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2
        image += amplitude[:, k, None, None] * np.exp(-d2 / (2 * width[:, k, None, None] ** 2))
    return image


def _present(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """A mask [n, high]: image i has its first ``U{low..high}`` of ``high`` slots on."""
    count = rng.integers(low, high + 1, n)
    return np.arange(high)[None, :] < count[:, None]


def _oriented(centre_x, centre_y, length, angle, width, amplitude, size):
    """Strokes of ``length`` at ``angle`` (radians from the x axis) around their centres."""
    hx, hy = 0.5 * length * np.cos(angle), 0.5 * length * np.sin(angle)
    return _strokes(
        size, centre_x - hx, centre_y - hy, centre_x + hx, centre_y + hy, width, amplitude
    )


# --- defects: each returns the defect's additive change to the surface, [n, size, size] ----


def _crazing(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    cells = 14
    margin = 4.0
    centres = rng.uniform(-margin, size + margin, (n, cells, 2))
    centres[~_present(rng, n, 8, cells)] = 1e6  # absent cells are too far to matter
    px, py = _grid(size)
    wx = px + 1.5 * _unit_field(rng, n, size, SMOOTH_PX, SMOOTH_PX)
    wy = py + 1.5 * _unit_field(rng, n, size, SMOOTH_PX, SMOOTH_PX)
    d1 = np.full((n, size, size), np.inf)
    d2 = np.full((n, size, size), np.inf)
    for k in range(cells):
        d = np.hypot(wx - centres[:, k, 0, None, None], wy - centres[:, k, 1, None, None])
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    width = rng.uniform(0.6, 0.9, (n, 1, 1))
    depth = rng.uniform(0.12, 0.2, (n, 1, 1))
    fade = np.clip(0.65 + 0.35 * _unit_field(rng, n, size, SMOOTH_PX, SMOOTH_PX), 0.3, 1.0)
    return -depth * np.exp(-((d2 - d1) ** 2) / (2 * width**2)) * fade


def _inclusion(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    k = 3
    cx, cy = rng.uniform(0.1 * size, 0.9 * size, (2, n, k))
    angle = np.radians(rng.normal(0.0, 10.0, (n, k)))
    amplitude = -rng.uniform(0.2, 0.35, (n, k)) * _present(rng, n, 1, k)
    return _oriented(
        cx, cy, rng.uniform(6, 16, (n, k)), angle, rng.uniform(0.8, 1.5, (n, k)), amplitude, size
    )


def _patches(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    k = 3
    px, py = _grid(size)
    cx, cy = rng.uniform(0.2 * size, 0.8 * size, (2, n, k))
    sx, sy = rng.uniform(3, 7, (n, k)), rng.uniform(2.5, 6, (n, k))
    amplitude = rng.uniform(0.15, 0.3, (n, k)) * _present(rng, n, 1, k)
    blobs = np.zeros((n, size, size))
    for j in range(k):
        e = ((px - cx[:, j, None, None]) / sx[:, j, None, None]) ** 2 + (
            (py - cy[:, j, None, None]) / sy[:, j, None, None]
        ) ** 2
        blobs += amplitude[:, j, None, None] * np.exp(-0.5 * e)
    irregular = np.clip(1.0 + 0.5 * _unit_field(rng, n, size, SMOOTH_PX, SMOOTH_PX), 0.0, None)
    return -np.minimum(blobs * irregular, 0.4)


def _pitted_surface(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    k = 30
    centre = rng.uniform(0.2 * size, 0.8 * size, (2, n, 1))
    spread = rng.uniform(4, 9, (n, 1))
    x, y = centre + spread * rng.standard_normal((2, n, k))
    amplitude = -rng.uniform(0.2, 0.4, (n, k)) * _present(rng, n, 12, k)
    return _strokes(size, x, y, x, y, rng.uniform(0.5, 1.0, (n, k)), amplitude)


def _rolled_in_scale(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    k = 20
    band = rng.uniform(0.2 * size, 0.8 * size, (n, 1))
    cx = rng.uniform(0, size, (n, k))
    cy = band + rng.uniform(3, 7, (n, 1)) * rng.standard_normal((n, k))
    angle = np.radians(rng.normal(0.0, 20.0, (n, k)))
    sign = np.where(rng.random((n, k)) < 0.7, -1.0, 1.0)
    amplitude = sign * rng.uniform(0.15, 0.3, (n, k)) * _present(rng, n, 8, k)
    return _oriented(
        cx, cy, rng.uniform(2, 6, (n, k)), angle, rng.uniform(0.7, 1.4, (n, k)), amplitude, size
    )


def _scratches(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    k = 2
    cx, cy = rng.uniform(0.2 * size, 0.8 * size, (2, n, k))
    angle = rng.uniform(0, np.pi, (n, k))
    amplitude = rng.uniform(0.2, 0.35, (n, k)) * _present(rng, n, 1, k)
    return _oriented(
        cx, cy, rng.uniform(18, 40, (n, k)), angle, rng.uniform(0.5, 0.8, (n, k)), amplitude, size
    )


_DEFECTS = {
    CRAZING: _crazing,
    INCLUSION: _inclusion,
    PATCHES: _patches,
    PITTED_SURFACE: _pitted_surface,
    ROLLED_IN_SCALE: _rolled_in_scale,
    SCRATCHES: _scratches,
}
