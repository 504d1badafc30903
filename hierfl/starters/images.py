"""The images starter's data: each camera's 16x16 grey images, one folder per class.

A part's surface is a smooth texture; a scratch is a thin bright line at a random angle,
a spot a dark blob. Cameras differ in brightness and noise (plant-b's lighting is dimmer),
and each camera sees its own mix of defects. Written as PNG files with Pillow.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from hierfl.starters.layout import each_device, each_plant

DEVICE = "camera"
CLASSES = ("ok", "scratch", "spot")
SIZE = 16
TEST_IMAGES = 90


def surface(rng: np.random.Generator, kind: str, brightness: float, noise: float) -> np.ndarray:
    """One `SIZE x SIZE` image in [0, 1] of class `kind`."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    image = brightness + 0.05 * np.sin(xx / 3.0 + phase) + rng.normal(0, noise, (SIZE, SIZE))
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(-3, 3)
        distance = np.abs(
            (xx - SIZE / 2) * np.sin(angle) - (yy - SIZE / 2) * np.cos(angle) - offset
        )
        image += 0.35 * np.exp(-(distance**2) / 0.8)
    elif kind == "spot":
        cy, cx = rng.uniform(4, SIZE - 4, 2)
        radius = rng.uniform(1.5, 3.0)
        image -= 0.3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2)
    return np.clip(image, 0.0, 1.0)


def write_images(
    folder: Path, rng: np.random.Generator, count: int, mix: np.ndarray, brightness: float
) -> list[Path]:
    """`count` images drawn from class proportions `mix`, as `folder/<class>/<n>.png`."""
    written = []
    for n, kind in enumerate(rng.choice(CLASSES, size=count, p=mix)):
        pixels = surface(rng, str(kind), brightness + rng.normal(0, 0.03), noise=0.04)
        path = folder / str(kind) / f"{n:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((255 * pixels).astype(np.uint8), mode="L").save(path)
        written.append(path)
    for kind in CLASSES:  # every class has its folder, even where a camera saw none
        (folder / kind).mkdir(parents=True, exist_ok=True)
    return written


def write_data(
    folder: Path, devices: Mapping[tuple[str, str], tuple[str, ...]], seed: int
) -> list[Path]:
    """Every camera's folder (`folder/PLANT/LINE/CAMERA/<class>/`) and each plant's `test/`."""
    written = []
    for plant, p, line, name, rng in each_device(devices, seed):
        mix = rng.dirichlet(np.full(len(CLASSES), 2.0))
        count = int(rng.integers(60, 100))
        written += write_images(folder / plant / line / name, rng, count, mix, 0.55 - 0.1 * p)
    for plant, p, rng in each_plant(devices, seed):
        even = np.full(len(CLASSES), 1 / len(CLASSES))
        written += write_images(folder / plant / "test", rng, TEST_IMAGES, even, 0.55 - 0.1 * p)
    return written
