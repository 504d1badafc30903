"""Tests of the simulated bearing vibration data.

Expected numbers are derived here by hand or with plain numpy signal processing (band-pass,
Hilbert envelope, FFT), never by calling the code under test for the reference.
"""

import time

import numpy as np
import pytest

from hierfl.data.tasks.bearing_data import (
    CLASSES,
    FS_HZ,
    WINDOW,
    BearingGeometry,
    MachineConditions,
    fault_frequencies,
    generate_plant,
    generate_windows,
    plant_conditions,
)

HEALTHY, OUTER, INNER, BALL = range(4)

# The 6205-2RS at 1797 rpm (fr = 29.95 Hz), from the published multiples of shaft speed
# (Case Western Reserve bearing data: BPFO 3.5848 fr, BPFI 5.4152 fr, 2 BSF 4.7135 fr,
# FTF 0.3983 fr), which follow from d / D = 7.94 / 39.04 = 0.20338 and n = 9:
#   BPFO = 4.5 fr (1 - 0.20338)                = 107.36 Hz
#   BPFI = 4.5 fr (1 + 0.20338)                = 162.19 Hz
#   BSF  = fr / (2 * 0.20338) (1 - 0.20338^2)  =  70.59 Hz
#   FTF  = fr / 2 (1 - 0.20338)                =  11.93 Hz
SHAFT_HZ_1797 = 1797 / 60
BPFO_1797, BPFI_1797, BSF_1797, FTF_1797 = 107.36, 162.19, 70.59, 11.93


def band_envelope(x: np.ndarray, low_hz, high_hz) -> np.ndarray:
    """|analytic signal| of x [N, T] band-passed to [low_hz, high_hz] (scalars or [N] arrays)."""
    spectrum = np.fft.fft(x, axis=-1)
    freq = np.fft.fftfreq(x.shape[-1], 1 / FS_HZ)
    keep = (freq >= np.reshape(low_hz, (-1, 1))) & (freq <= np.reshape(high_hz, (-1, 1)))
    return np.abs(np.fft.ifft(2 * spectrum * keep, axis=-1))


def envelope_spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies [F] in Hz, magnitudes [N, F]) of the 1.5-5.5 kHz band's envelope."""
    envelope = band_envelope(x, 1500.0, 5500.0)
    envelope -= envelope.mean(axis=-1, keepdims=True)
    return np.fft.rfftfreq(x.shape[-1], 1 / FS_HZ), np.abs(np.fft.rfft(envelope, axis=-1))


def test_constants():
    assert FS_HZ == 12_000
    assert WINDOW == 512
    assert CLASSES == ("healthy", "outer", "inner", "ball")


def test_fault_frequencies_of_6205_at_1797_rpm_match_textbook_values():
    freqs = fault_frequencies(BearingGeometry(), SHAFT_HZ_1797)
    assert freqs.keys() == {"bpfo", "bpfi", "bsf", "ftf"}
    np.testing.assert_allclose(freqs["bpfo"], BPFO_1797, atol=0.02)
    np.testing.assert_allclose(freqs["bpfi"], BPFI_1797, atol=0.02)
    np.testing.assert_allclose(freqs["bsf"], BSF_1797, atol=0.02)
    np.testing.assert_allclose(freqs["ftf"], FTF_1797, atol=0.02)
    np.testing.assert_allclose(2 * freqs["bsf"], 4.7135 * SHAFT_HZ_1797, rtol=1e-4)


def test_fault_frequencies_scale_with_shaft_speed_and_vectorize():
    shaft_hz = np.array([10.0, 20.0, 40.0])
    freqs = fault_frequencies(BearingGeometry(), shaft_hz)
    np.testing.assert_allclose(freqs["bpfo"], 3.5848 * shaft_hz, rtol=1e-4)
    np.testing.assert_allclose(freqs["bpfi"], 5.4152 * shaft_hz, rtol=1e-4)
    np.testing.assert_allclose(freqs["ftf"], 0.3983 * shaft_hz, rtol=1e-4)
    # BPFO + BPFI = n fr for any geometry.
    np.testing.assert_allclose(freqs["bpfo"] + freqs["bpfi"], 9 * shaft_hz)


@pytest.fixture(scope="module")
def long_windows() -> np.ndarray:
    """One second (12,000 samples) of each class at 1797 rpm, full load, little noise."""
    conditions = MachineConditions(rpm=1797.0, load=1.0, noise=0.05, resonance_hz=3000.0)
    labels = np.array([HEALTHY, OUTER, INNER, BALL, HEALTHY, OUTER, INNER, BALL])
    return generate_windows(np.random.default_rng(0), conditions, labels, window=FS_HZ)


@pytest.mark.parametrize(
    "label, expected_hz", [(OUTER, BPFO_1797), (INNER, BPFI_1797), (BALL, 2 * BSF_1797)]
)
def test_envelope_spectrum_peaks_at_the_fault_frequency(long_windows, label, expected_hz):
    freq, magnitude = envelope_spectrum(long_windows[[label, label + 4]])
    band = (freq >= 50) & (freq <= 300)
    peaks_hz = freq[band][np.argmax(magnitude[:, band], axis=-1)]
    np.testing.assert_allclose(peaks_hz, expected_hz, atol=2.0)


def test_healthy_windows_have_no_fault_frequency_energy(long_windows):
    freq, magnitude = envelope_spectrum(long_windows)
    fault_bands = [np.abs(freq - f) <= 2 for f in (BPFO_1797, BPFI_1797, 2 * BSF_1797)]
    energy = np.stack([(magnitude[:, band] ** 2).sum(axis=-1) for band in fault_bands], axis=-1)
    labels = np.array([HEALTHY, OUTER, INNER, BALL] * 2)
    healthy_max = energy[labels == HEALTHY].max()
    for label, band in ((OUTER, 0), (INNER, 1), (BALL, 2)):
        assert energy[labels == label, band].min() > 100 * healthy_max


def test_inner_race_impacts_are_modulated_by_the_shaft_and_outer_race_impacts_are_not(long_windows):
    freq, magnitude = envelope_spectrum(long_windows)

    def level(row, hz):  # spectrum at hz relative to the 50-300 Hz median
        near = np.abs(freq - hz) <= 1
        return magnitude[row, near].max() / np.median(magnitude[row, (freq >= 50) & (freq <= 300)])

    for side in (-1, 1):
        assert level(INNER, BPFI_1797 + side * SHAFT_HZ_1797) > 8
        assert level(OUTER, BPFO_1797 + side * SHAFT_HZ_1797) < 4


def test_same_seed_gives_identical_plants_and_other_seeds_or_plants_differ():
    def plant(seed, plant_index):
        return generate_plant(
            seed=seed, plant_index=plant_index, num_machines=5, windows_per_machine=8, shift=0.3
        )

    first, again = plant(3, 1), plant(3, 1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other_seed, other_plant = plant(4, 1), plant(3, 2)
    assert not np.allclose(first[0], other_seed[0])
    assert not np.allclose(first[0], other_plant[0])


def test_generate_windows_is_deterministic_in_the_generator():
    conditions = MachineConditions(rpm=1700.0, load=0.8, noise=0.1, resonance_hz=3100.0)
    labels = np.array([0, 1, 2, 3, 3, 2])
    a = generate_windows(np.random.default_rng(7), conditions, labels)
    b = generate_windows(np.random.default_rng(7), conditions, labels)
    c = generate_windows(np.random.default_rng(8), conditions, labels)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_shapes_and_dtypes():
    x, y, machine = generate_plant(
        seed=0, plant_index=0, num_machines=3, windows_per_machine=5, shift=0.0
    )
    assert x.shape == (15, WINDOW) and x.dtype == np.float32
    assert y.shape == (15,) and y.dtype == np.int32
    assert machine.shape == (15,) and machine.dtype == np.int32
    np.testing.assert_array_equal(machine, np.repeat([0, 1, 2], 5))
    assert np.all(np.isfinite(x))

    x, _, _ = generate_plant(
        seed=0, plant_index=0, num_machines=2, windows_per_machine=3, shift=0.0, window=100
    )
    assert x.shape == (6, 100)

    per_window = MachineConditions(
        rpm=np.array([1500.0, 2500.0]), load=0.7, noise=np.array([0.1, 0.3]), resonance_hz=3000.0
    )
    x = generate_windows(np.random.default_rng(0), per_window, np.array([1, 2]))
    assert x.shape == (2, WINDOW)


def test_windows_are_order_one_in_g():
    for shift in (0.0, 1.0):
        x, _, _ = generate_plant(
            seed=1, plant_index=0, num_machines=20, windows_per_machine=8, shift=shift
        )
        std = x.std(axis=-1)
        assert 0.05 < std.min() and std.max() < 3.0


@pytest.mark.parametrize("windows_per_machine", [8, 10, 3])
def test_classes_are_balanced_within_each_machine_and_shuffled(windows_per_machine):
    num_machines = 12
    _, y, machine = generate_plant(
        seed=2,
        plant_index=0,
        num_machines=num_machines,
        windows_per_machine=windows_per_machine,
        shift=0.5,
    )
    counts = np.zeros((num_machines, 4), int)
    np.add.at(counts, (machine, y), 1)
    assert np.all(counts.max(axis=1) - counts.min(axis=1) <= 1)
    total = counts.sum(axis=0)
    assert total.max() - total.min() <= 1
    in_order = np.arange(num_machines * windows_per_machine) % 4
    if windows_per_machine > 3:
        assert not np.array_equal(y, in_order)


def test_plant_conditions_move_with_shift():
    calm = plant_conditions(np.random.default_rng(0), 500, shift=0.0)
    severe = plant_conditions(np.random.default_rng(0), 500, shift=1.0)
    assert calm.rpm.shape == (500,)
    assert 1500 <= calm.rpm.min() and calm.rpm.max() <= 1800
    assert 0.5 <= calm.load.min() and calm.load.max() <= 1.0
    np.testing.assert_allclose(severe.rpm.mean() / calm.rpm.mean(), 1.6, rtol=0.05)
    np.testing.assert_allclose(severe.noise.mean() / calm.noise.mean(), 3.0, rtol=0.05)
    assert severe.resonance_hz.mean() > calm.resonance_hz.mean() + 300
    assert np.all(severe.resonance_hz < FS_HZ / 2)


def test_plants_with_different_shift_are_measurably_different_domains():
    """Measured from the signals alone: the shaft turns faster and the noise floor is higher."""

    def measure(shift):
        x, y, _ = generate_plant(
            seed=5, plant_index=0, num_machines=40, windows_per_machine=4, shift=shift, window=4096
        )
        healthy = x[y == HEALTHY].astype(np.float64)
        # The 1x shaft line, from a zero-padded spectrum: 25-48 Hz over both plants, and the
        # band stops below the calm plant's 2x line (>= 50 Hz), which can be the stronger.
        freq = np.fft.rfftfreq(8 * 4096, 1 / FS_HZ)
        spectrum = np.abs(np.fft.rfft(healthy * np.hanning(4096), 8 * 4096, axis=-1))
        low = (freq >= 15) & (freq <= 49)
        shaft_hz = freq[low][np.argmax(spectrum[:, low], axis=-1)]
        # Noise floor: the 5.5-6 kHz band, far above the resonances, per window.
        full = np.abs(np.fft.rfft(x, axis=-1)) ** 2
        high = np.fft.rfftfreq(4096, 1 / FS_HZ) >= 5500
        noise_std = np.sqrt(full[:, high].mean(axis=-1) / 4096)  # E|X_k|^2 = N sigma^2
        return shaft_hz.mean(), noise_std.mean()

    shaft_calm, noise_calm = measure(0.0)
    shaft_severe, noise_severe = measure(1.0)
    assert 25 <= shaft_calm <= 30  # 1500-1800 rpm
    np.testing.assert_allclose(shaft_severe / shaft_calm, 1.6, rtol=0.05)
    np.testing.assert_allclose(noise_calm, 0.15, rtol=0.15)
    np.testing.assert_allclose(noise_severe / noise_calm, 3.0, rtol=0.15)


def envelope_order_features(x: np.ndarray, conditions: MachineConditions) -> np.ndarray:
    """Per window [N, 5]: envelope-spectrum strength at BPFO, BPFI and 2 BSF (harmonics 1-3,
    relative to the envelope's mean), the envelope's kurtosis, and its level over the noise.

    The envelope is taken in a 1.2 kHz band around the machine's resonance, and the fault
    frequencies from its shaft speed (order tracking with a tachometer)."""
    envelope = band_envelope(x, conditions.resonance_hz - 600, conditions.resonance_hz + 600)
    t_s = np.arange(x.shape[-1]) / FS_HZ
    shaft_hz = conditions.rpm / 60
    ratio = 7.94 / 39.04
    fault_hz = [
        4.5 * shaft_hz * (1 - ratio),
        4.5 * shaft_hz * (1 + ratio),
        shaft_hz / ratio * (1 - ratio**2),
    ]
    strength = [
        sum(
            np.abs((envelope * np.exp(-2j * np.pi * h * f[:, None] * t_s)).sum(axis=-1))
            for h in (1, 2, 3)
        )
        / envelope.sum(axis=-1)
        for f in fault_hz
    ]
    kurtosis = (envelope**4).mean(axis=-1) / (envelope**2).mean(axis=-1) ** 2
    level = envelope.mean(axis=-1) / conditions.noise
    return np.stack([*strength, np.log(kurtosis), np.log(level)], axis=-1)


@pytest.mark.parametrize("shift, min_accuracy", [(0.0, 0.70), (1.0, 0.50)])
def test_classes_are_separable_by_envelope_features(shift, min_accuracy):
    """Nearest class centroid on standardized envelope features, fitted on 25 of a plant's
    machines and tested on its other 25, beats chance (25 %) clearly."""
    rng = np.random.default_rng([11, 0])
    plant = plant_conditions(rng, 50, shift)
    machine = np.repeat(np.arange(50), 40)
    y = np.arange(machine.size) % 4
    x = generate_windows(rng, plant.take(machine), y)
    features = envelope_order_features(x.astype(np.float64), plant.take(machine))

    train = machine < 25  # unseen machines of the same plant at test time
    mean, std = features[train].mean(axis=0), features[train].std(axis=0)
    z = (features - mean) / std
    centroids = np.stack([z[train & (y == c)].mean(axis=0) for c in range(4)])
    predicted = np.argmin(((z[~train, None, :] - centroids) ** 2).sum(axis=-1), axis=-1)
    accuracy = (predicted == y[~train]).mean()
    print(f"shift {shift}: envelope-feature nearest-centroid accuracy {accuracy:.3f}")
    assert accuracy > min_accuracy


def test_generation_time_of_1000_machines_by_48_windows():
    start = time.perf_counter()
    x, y, _ = generate_plant(
        seed=0, plant_index=0, num_machines=1000, windows_per_machine=48, shift=0.5
    )
    seconds = time.perf_counter() - start
    print(f"generate_plant 1000 machines x 48 windows x {WINDOW} samples: {seconds:.2f} s")
    assert x.shape == (48_000, WINDOW) and np.bincount(y).tolist() == [12_000] * 4


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(shift=-0.1),
        dict(shift=1.5),
        dict(num_machines=0),
        dict(windows_per_machine=0),
        dict(seed=-1),
    ],
)
def test_generate_plant_rejects_bad_arguments(kwargs):
    arguments = dict(seed=0, plant_index=0, num_machines=2, windows_per_machine=4, shift=0.0)
    with pytest.raises(ValueError):
        generate_plant(**(arguments | kwargs))


def test_generate_windows_rejects_unknown_labels():
    conditions = MachineConditions(rpm=1700.0, load=0.8, noise=0.1, resonance_hz=3000.0)
    with pytest.raises(ValueError, match="class indices"):
        generate_windows(np.random.default_rng(0), conditions, np.array([0, 4]))
