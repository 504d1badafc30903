"""`bearing-fault`: rolling-bearing fault classification from vibration windows.

Each device is a machine with its own operating conditions (speed, load, sensor noise,
housing resonance) drawn from its plant's distribution; `shift` moves that distribution
(faster machines, noisier sensors), so plants are naturally non-IID. A plant's `classes`
(topology) limits it to the faults its machines develop. The windows come
from the physical model in `hierfl.data.tasks.bearing_data` (generated offline, deterministic
in the seed). Classes: healthy, outer-race, inner-race and ball fault; a 1D CNN on the
window's envelope (`EnvelopeCNN`) learns them.
"""

from __future__ import annotations

import math

import numpy as np

from hierfl.data.tasks import bearing_data
from hierfl.data.tasks.base import PerPlant, PlantData, PlantRequest, Task, stratified_test_split
from hierfl.data.tasks.models import EnvelopeCNN

DEFAULT_SAMPLES_PER_DEVICE = 48
WINDOW = 2048
"""Samples per window: 171 ms at 12 kHz, several shaft turns, so the fault rate is visible."""


def _plant_data(request: PlantRequest, test_fraction: float, seed: int) -> PlantData:
    train_samples = request.train_samples or DEFAULT_SAMPLES_PER_DEVICE * request.num_devices
    # Holding out test_fraction of each class rounds per class: generate one spare window
    # per class so that at least `train_samples` always remain for training.
    classes = (
        None
        if request.classes is None
        else tuple(bearing_data.CLASSES.index(c) for c in request.classes)
    )
    spare = len(bearing_data.CLASSES)
    per_machine = math.ceil((train_samples / (1.0 - test_fraction) + spare) / request.num_devices)
    x, y, _ = bearing_data.generate_plant(
        seed,
        request.index,
        request.num_devices,
        per_machine,
        request.shift,
        window=WINDOW,
        classes=classes,
    )
    rng = np.random.default_rng([seed, 3, request.index])
    train, test = stratified_test_split(y, test_fraction, rng)
    train = rng.permutation(train)[:train_samples]
    x = x[..., None]  # [N, window, 1]: one sensor channel
    return PlantData(x[np.sort(train)], y[np.sort(train)], x[test], y[test])


TASK = Task(
    name="bearing-fault",
    description="vibration windows from a physical rolling-bearing fault model (4 classes)",
    input_shape=(WINDOW, 1),
    class_names=bearing_data.CLASSES,
    models={"cnn1d": lambda rngs: EnvelopeCNN(len(bearing_data.CLASSES), rngs=rngs)},
    default_model="cnn1d",
    make_plant_data=PerPlant(_plant_data),
    default_samples_per_device=DEFAULT_SAMPLES_PER_DEVICE,
)
