"""`steel-defects`: visual inspection of hot-rolled steel strip, 7 classes.

Cameras over the strip take 32 x 32 grayscale patches; the model tells defect-free steel
from the six NEU surface-defect classes (crazing, inclusion, patches, pitted surface,
rolled-in scale, scratches). The images come from the procedural generator in
`hierfl.data.tasks.steel_defects_data` (deterministic in the seed, documented there). Each
plant has its own camera and strip texture, drawn from its `shift`: exposure, focus blur,
sensor noise and a coarser texture, so plants are distinct domains; a plant's train and
test images come from the same camera. A plant's images are balanced over the classes
its `classes` (topology) name, all of them by default; label skew between devices comes
from the lines' partitions (e.g. dirichlet).
"""

from __future__ import annotations

import math

import numpy as np

from hierfl.data.tasks import steel_defects_data
from hierfl.data.tasks.base import PerPlant, PlantData, PlantRequest, Task, stratified_test_split
from hierfl.data.tasks.models import SurfaceCNN

DEFAULT_SAMPLES_PER_DEVICE = 64
SIZE = steel_defects_data.SIZE
_SPLIT = 8  # purpose of the test-split stream: default_rng([seed, _SPLIT, plant_index])


def _plant_data(request: PlantRequest, test_fraction: float, seed: int) -> PlantData:
    train_samples = request.train_samples or DEFAULT_SAMPLES_PER_DEVICE * request.num_devices
    # Holding out test_fraction of each class rounds per class: one spare image per class
    # guarantees that at least `train_samples` remain for training.
    classes = (
        None
        if request.classes is None
        else tuple(steel_defects_data.CLASSES.index(c) for c in request.classes)
    )
    spare = len(steel_defects_data.CLASSES if classes is None else classes)
    total = math.ceil(train_samples / (1.0 - test_fraction)) + spare
    x, y = steel_defects_data.generate_plant(
        seed, request.index, total, request.shift, classes=classes
    )
    rng = np.random.default_rng([seed, _SPLIT, request.index])
    train, test = stratified_test_split(y, test_fraction, rng)
    train = np.sort(rng.permutation(train)[:train_samples])
    x = x[..., None]  # [N, 32, 32, 1]: one gray channel
    return PlantData(x[train], y[train], x[test], y[test])


TASK = Task(
    name="steel-defects",
    description="hot-rolled steel surface images: defect-free and 6 NEU defect classes (procedural)",
    input_shape=(SIZE, SIZE, 1),
    class_names=steel_defects_data.CLASSES,
    models={"cnn": lambda rngs: SurfaceCNN(len(steel_defects_data.CLASSES), rngs=rngs)},
    default_model="cnn",
    make_plant_data=PerPlant(_plant_data),
    default_samples_per_device=DEFAULT_SAMPLES_PER_DEVICE,
)
