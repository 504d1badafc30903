"""Tests of the procedural steel-surface images and the `steel-defects` task.

Expected numbers come from the module docstring's formulas worked by hand (class counts,
split sizes, camera ranges) or from independent numpy/scipy computations (a Gaussian blur
by scipy.ndimage, pixel statistics), never from the generator's own helpers.
"""

import numpy as np
import pytest
from scipy import ndimage

from hierfl.data.tasks import TASKS, PlantRequest
from hierfl.data.tasks.steel_defects_data import (
    CLASSES,
    SIZE,
    Camera,
    generate_plant,
    plant_camera,
    render_images,
)
from hierfl.errors import DataError

TASK = TASKS["steel-defects"]
DEFECT_FREE, CRAZING, INCLUSION, PATCHES, PITTED, ROLLED_IN_SCALE, SCRATCHES = range(7)


def test_classes_and_shapes():
    assert CLASSES == (
        "defect-free",
        "crazing",
        "inclusion",
        "patches",
        "pitted-surface",
        "rolled-in-scale",
        "scratches",
    )
    assert SIZE == 32
    assert (
        TASK.class_names == CLASSES
        and TASK.input_shape == (32, 32, 1)
        and TASK.default_model == "cnn"
    )
    x, y = generate_plant(0, 0, 30, 0.5)
    assert x.shape == (30, 32, 32) and x.dtype == np.float32
    assert y.shape == (30,) and y.dtype == np.int32
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_deterministic_in_the_seed_and_the_plant():
    a = generate_plant(3, 1, 40, 0.5)
    b = generate_plant(3, 1, 40, 0.5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for other in (generate_plant(4, 1, 40, 0.5), generate_plant(3, 2, 40, 0.5)):
        assert not np.array_equal(a[0], other[0])


@pytest.mark.parametrize(
    "n, counts",
    [
        (
            100,
            [15, 15, 14, 14, 14, 14, 14],
        ),  # 100 = 7 * 14 + 2: the two lowest classes take one more
        (7, [1] * 7),
        (3, [1, 1, 1, 0, 0, 0, 0]),
    ],
)
def test_classes_are_balanced_as_documented(n, counts):
    _, y = generate_plant(0, 0, n, 0.0)
    np.testing.assert_array_equal(np.bincount(y, minlength=7), counts)
    assert n < 14 or not np.all(np.diff(y) >= 0)  # shuffled, not in class order


def deviation_fractions(x, y):
    """Per image, the fraction of pixels more than 3 sigma darker / brighter than the image's
    median, sigma being the robust (MAD) spread of defect-free images."""
    deviation = x.astype(np.float64) - np.median(x, axis=(1, 2), keepdims=True)
    sigma = 1.4826 * np.median(np.abs(deviation[y == DEFECT_FREE]))
    return (deviation < -3 * sigma).mean(axis=(1, 2)), (deviation > 3 * sigma).mean(axis=(1, 2))


def test_every_defect_class_differs_measurably_from_defect_free():
    y = np.repeat(np.arange(7), 60)
    x = render_images(np.random.default_rng(0), y)
    dark, bright = deviation_fractions(x, y)

    def mean(fraction, c):
        return fraction[y == c].mean()

    free = mean(dark, DEFECT_FREE) + mean(bright, DEFECT_FREE)
    assert free < 0.01  # the clean strip: a Gaussian texture puts ~0.3 % beyond 3 sigma
    for c in range(1, 7):
        assert mean(dark, c) + mean(bright, c) > 5 * free, CLASSES[c]
    # The documented sign of each defect: dark cracks, streaks, blotches and pits, bright
    # scratches, and rolled-in scale with both dark flakes and bright flake edges.
    for c in (CRAZING, INCLUSION, PATCHES, PITTED):
        assert mean(dark, c) > 3 * mean(bright, c), CLASSES[c]
    assert mean(bright, SCRATCHES) > 3 * mean(dark, SCRATCHES)
    assert mean(bright, ROLLED_IN_SCALE) > 5 * mean(bright, DEFECT_FREE)
    assert mean(dark, ROLLED_IN_SCALE) > 5 * mean(dark, DEFECT_FREE)


def test_defect_area_follows_the_documented_sizes():
    # Patches are blobs of several pixels' standard deviation; pits and scratches are thin.
    # The darkest 5x5 box mean (a smoothed minimum) is much lower for patches than for pits.
    y = np.repeat([PATCHES, PITTED], 60)
    x = render_images(np.random.default_rng(1), y).astype(np.float64)
    centred = x - np.median(x, axis=(1, 2), keepdims=True)
    smoothed_min = ndimage.uniform_filter(centred, size=(1, 5, 5)).min(axis=(1, 2))
    assert np.median(smoothed_min[y == PATCHES]) < np.median(smoothed_min[y == PITTED]) - 0.05


def surfaces(camera, labels=None, seed=5):
    """Images of the same surfaces (same stream) through `camera`."""
    labels = np.zeros(12, np.int64) if labels is None else labels
    return render_images(np.random.default_rng(seed), labels, camera).astype(np.float64)


def test_camera_gain_and_offset_are_affine():
    base = surfaces(Camera(noise=0.0))
    assert 0.05 < base.min() and base.max() < 0.85  # no clipping below, so the map is exact
    np.testing.assert_allclose(
        surfaces(Camera(noise=0.0, gain=1.2, offset=-0.05)), 1.2 * base - 0.05, atol=2e-6
    )


def test_camera_blur_is_a_gaussian_with_replicated_edges():
    base = surfaces(Camera(noise=0.0))
    expected = ndimage.gaussian_filter(base, sigma=(0, 1.0, 1.0), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(surfaces(Camera(noise=0.0, blur_px=1.0)), expected, atol=2e-6)


def test_camera_noise_has_the_documented_spread():
    difference = surfaces(Camera(noise=0.05)) - surfaces(Camera(noise=0.0))
    assert abs(difference.std() - 0.05) < 0.003
    assert abs(difference.mean()) < 0.003


def test_plant_camera_follows_the_documented_formulas():
    assert plant_camera(0.0, np.random.default_rng(0)) == Camera()
    cameras = [plant_camera(1.0, np.random.default_rng(i)) for i in range(50)]
    for camera in cameras:
        assert 0.7 <= camera.gain <= 1.3 and -0.1 <= camera.offset <= 0.1
        assert (
            camera.blur_px,
            camera.noise,
            camera.grain_contrast,
            camera.grain_length_px,
        ) == pytest.approx((0.8, 0.03, 0.08, 3.0))
    assert np.std([c.gain for c in cameras]) > 0.1  # exposure differs between plants
    half = plant_camera(0.5, np.random.default_rng(0))
    assert (half.blur_px, half.noise) == pytest.approx((0.4, 0.0225))


def test_shift_changes_a_plants_images_but_not_its_labels():
    sharp, y_sharp = generate_plant(0, 0, 70, 0.0)
    shifted, y_shifted = generate_plant(0, 0, 70, 1.0)
    np.testing.assert_array_equal(y_sharp, y_shifted)
    assert np.abs(sharp.astype(np.float64) - shifted).mean() > 0.03
    # Blur (0.8 px) and coarser grain (3 px) take out fine detail: a small pit loses depth.
    pits = y_sharp == PITTED

    def depth(x):
        return (np.median(x, axis=(1, 2)) - x.min(axis=(1, 2)))[pits].mean()

    assert depth(shifted) < 0.8 * depth(sharp)


def test_bad_arguments_are_data_errors():
    with pytest.raises(DataError, match="shift"):
        generate_plant(0, 0, 10, 1.5)
    with pytest.raises(DataError, match="class indices"):
        render_images(np.random.default_rng(0), np.array([0, 7]))
    with pytest.raises(DataError, match="at least one image"):
        generate_plant(0, 0, 0, 0.0)


# --- the task ----------------------------------------------------------------------------


def request(index, devices, train=None, shift=0.0):
    return PlantRequest(f"plant-{index}", index, devices, train, shift)


def test_task_honours_train_samples_and_holds_out_each_class():
    (plant,) = TASK.make_plant_data([request(0, 2, 140)], 0.25, 0)
    # ceil(140 / 0.75) + 7 spare = 194 images = 27 * 7 + 5: classes 0-4 have 28, 5-6 have 27.
    # round(0.25 * 28) = 7 and round(0.25 * 27) = 7 are held out per class: 49 test images.
    np.testing.assert_array_equal(np.bincount(plant.y_test, minlength=7), [7] * 7)
    assert len(plant.y_train) == 140
    assert plant.x_train.shape == (140, 32, 32, 1) and plant.x_test.shape == (49, 32, 32, 1)
    assert plant.x_train.dtype == np.float32 and plant.y_train.dtype == np.int32
    train_counts = np.bincount(plant.y_train, minlength=7)
    assert (
        train_counts.min() >= 20 - 5
    )  # 145 left after the split (21 or 20 per class), 5 dropped at random
    # No image is both a training and a test image.
    train_rows = {row.tobytes() for row in plant.x_train}
    assert not any(row.tobytes() in train_rows for row in plant.x_test)


def test_task_default_samples_and_plant_independence():
    requests = [request(0, 3, shift=0.0), request(1, 2, 50, shift=1.0)]
    plants = list(TASK.make_plant_data(requests, 0.2, 1))
    assert len(plants[0].y_train) == 64 * 3
    (alone,) = TASK.make_plant_data([requests[1]], 0.2, 1)
    np.testing.assert_array_equal(alone.x_train, plants[1].x_train)
    np.testing.assert_array_equal(alone.x_test, plants[1].x_test)
