"""Vibration windows of rolling bearings, simulated from a physical model of localized faults.

The industrial task "bearing-fault": an accelerometer on a bearing housing records a window
of ``WINDOW`` samples at ``FS_HZ``; a classifier tells ``CLASSES`` apart: 0 healthy,
1 outer-race fault, 2 inner-race fault, 3 ball fault. Everything is generated offline,
vectorized over windows, and deterministic in the seed.

Bearing kinematics
------------------
For a bearing with ``n`` balls of diameter ``d``, pitch diameter ``D`` and contact angle
``phi``, turning at shaft frequency ``fr = rpm / 60`` with a stationary outer race, a
localized defect is struck at (Harris, *Rolling Bearing Analysis*; Randall & Antoni 2011)::

    BPFO = (n / 2) fr (1 - (d / D) cos phi)            ball pass, outer race
    BPFI = (n / 2) fr (1 + (d / D) cos phi)            ball pass, inner race
    BSF  = (D / (2 d)) fr (1 - ((d / D) cos phi)^2)    ball spin
    FTF  = (fr / 2) (1 - (d / D) cos phi)              cage (fundamental train)

The default ``BearingGeometry`` is the 6205-2RS deep-groove ball bearing of the Case Western
Reserve bearing data (n = 9, d = 7.94 mm, D = 39.04 mm, phi = 0): at 1797 rpm,
BPFO = 107.4 Hz, BPFI = 162.2 Hz, BSF = 70.6 Hz and FTF = 11.9 Hz.

Signal model
------------
One window, in g (1 g = 9.81 m/s^2), is::

    x(t) = sum_k A_k h(t - t_k)                              fault impacts
         + a1 sin(2 pi fr t + p1) + a2 sin(4 pi fr t + p2)    shaft 1x, 2x
         + noise * e(t),  e ~ N(0, 1) i.i.d.                  sensor noise

* **Impacts** come at the fault frequency ``ff``: BPFO (outer), BPFI (inner), ``2 BSF``
  (ball: a spinning defect strikes both races once per ball revolution); healthy windows
  have none. ``t_k = (k + u) / ff + delta_k`` with ``u ~ U(0, 1)`` (the window starts at a
  random time) and slip jitter ``delta_k ~ N(0, (slip / ff)^2)``, ``slip = 1.5 %``.
* **Ring-down**: each impact excites the housing resonance,
  ``h(t) = exp(-t / tau) sin(2 pi f_res t)`` for ``t >= 0``, with
  ``tau = 1 / (2 pi zeta f_res)`` and damping ratio ``zeta = 0.07`` (tau = 0.76 ms at 3 kHz).
* **Amplitude** ``A_k = impact_g * load * (rpm / 1800) * m(t_k) * exp(spread * eta_k)`` with
  ``eta_k ~ N(0, 1)``: load and speed (the rolling element's impact velocity) scale the
  impacts, ``spread`` makes each impact's strength random, and ``m`` is the load-zone
  modulation::

      outer:  m(t) = 1                         (defect stays in the load zone)
      inner:  m(t) = f + (1 - f) (1 + cos(2 pi fr  t + psi)) / 2   (turns with the shaft)
      ball:   m(t) = f + (1 - f) (1 + cos(2 pi FTF t + psi)) / 2   (turns with the cage)

  with floor ``f = 0.2`` and a random phase ``psi``.
* **Shaft harmonics** (imbalance at 1x, misalignment at 2x) are in every class:
  ``a1 = shaft_1x_g * (rpm / 1800)^2 * U(0.5, 1.5)`` (an imbalance force grows with the
  square of speed), ``a2 = shaft_2x_g * U(0.5, 1.5)``, with random phases ``p1, p2``.

The constants live in ``VibrationModel``; the per-machine ``MachineConditions`` (speed, load,
noise, resonance) come from ``plant_conditions``, whose ``shift`` moves a whole plant's
distribution (faster, noisier, a different resonance) to make plants distinct domains.

Normalization: windows are returned in g without rescaling. The model's constants put
values at O(1) (window standard deviation about 0.2 g to 1 g), so the fixed scale is 1 g.
Windows are deliberately *not* standardized one by one: the impact energy above the noise
floor is what separates a faulty bearing from a healthy one, and it would be lost.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hierfl.data.partition import class_indices
from hierfl.errors import DataError

FS_HZ = 12_000
WINDOW = 512
CLASSES = ("healthy", "outer", "inner", "ball")

HEALTHY, OUTER, INNER, BALL = range(len(CLASSES))
_CHUNK = 4096  # windows simulated per batch: bounds temporary memory to ~100 MB


@dataclasses.dataclass(frozen=True)
class BearingGeometry:
    """Geometry of a rolling bearing; the defaults are a 6205-2RS deep-groove ball bearing.

    Attributes:
      n_balls: number of rolling elements.
      ball_diameter_mm: rolling-element diameter ``d`` in mm.
      pitch_diameter_mm: pitch (cage) diameter ``D`` in mm.
      contact_angle_deg: contact angle ``phi`` in degrees (0 for a radially loaded ball bearing).
    """

    n_balls: int = 9
    ball_diameter_mm: float = 7.94
    pitch_diameter_mm: float = 39.04
    contact_angle_deg: float = 0.0


@dataclasses.dataclass(frozen=True)
class VibrationModel:
    """Constants of the signal model (see the module docstring for where each enters).

    Attributes:
      impact_g: peak acceleration of one impact at load 1 and ``reference_rpm``, in g.
      impact_spread: standard deviation of the log of an impact's amplitude.
      slip: standard deviation of an impact's timing, as a fraction of the fault period.
      damping_ratio: damping ratio ``zeta`` of the excited resonance.
      modulation_floor: ``m`` at its minimum for inner-race and ball faults, in [0, 1].
      shaft_1x_g: mean 1x shaft amplitude at ``reference_rpm``, in g.
      shaft_2x_g: mean 2x shaft amplitude, in g.
      reference_rpm: speed at which ``impact_g`` and ``shaft_1x_g`` hold.
    """

    impact_g: float = 1.0
    impact_spread: float = 0.3
    slip: float = 0.015
    damping_ratio: float = 0.07
    modulation_floor: float = 0.2
    shaft_1x_g: float = 0.1
    shaft_2x_g: float = 0.05
    reference_rpm: float = 1800.0


@dataclasses.dataclass(frozen=True)
class MachineConditions:
    """Operating conditions of machines, as a struct of arrays (or of floats for one machine).

    Each field is a float or an array; all fields broadcast to one shape, one entry per
    machine (from ``plant_conditions``) or per window (``take``, for ``generate_windows``).

    Attributes:
      rpm: shaft speed in revolutions per minute.
      load: radial load as a fraction of the rated load, in (0, 1]; scales impact amplitude.
      noise: standard deviation of the broadband sensor noise, in g.
      resonance_hz: frequency of the housing resonance the impacts excite, in Hz (< FS_HZ / 2).
    """

    rpm: float | np.ndarray
    load: float | np.ndarray
    noise: float | np.ndarray
    resonance_hz: float | np.ndarray

    def take(self, index: np.ndarray) -> MachineConditions:
        """Conditions of the machines at ``index`` (e.g. each window's machine id)."""
        return MachineConditions(
            *(np.asarray(getattr(self, f.name))[index] for f in dataclasses.fields(self))
        )


def fault_frequencies(
    geometry: BearingGeometry, shaft_hz: float | np.ndarray
) -> dict[str, float | np.ndarray]:
    """The characteristic fault frequencies in Hz, for a shaft turning at ``shaft_hz``.

    Returns a dict with keys "bpfo", "bpfi", "bsf", "ftf" (formulas in the module docstring);
    each value has the shape of ``shaft_hz``. Note a ball defect is struck at ``2 * bsf``.
    """
    ratio = geometry.ball_diameter_mm / geometry.pitch_diameter_mm
    ratio_cos = ratio * math.cos(math.radians(geometry.contact_angle_deg))
    half_n = geometry.n_balls / 2
    return {
        "bpfo": half_n * shaft_hz * (1 - ratio_cos),
        "bpfi": half_n * shaft_hz * (1 + ratio_cos),
        "bsf": shaft_hz / (2 * ratio) * (1 - ratio_cos**2),
        "ftf": shaft_hz / 2 * (1 - ratio_cos),
    }


def plant_conditions(
    rng: np.random.Generator, num_machines: int, shift: float
) -> MachineConditions:
    """Draws the operating conditions of a plant's machines; ``shift`` in [0, 1] moves the plant.

    Each machine independently, with ``s = shift``::

        rpm          ~ U(1500, 1800) * (1 + 0.6 s)       up to 2880 rpm at s = 1
        load         ~ U(0.5, 1.0)
        noise        ~ U(0.1, 0.2) * (1 + 2 s)           g; up to 3x noisier at s = 1
        resonance_hz ~ 3000 * (1 + 0.2 s) * U(0.9, 1.1)  about 3.0 kHz -> 3.6 kHz

    Plants with different ``shift`` are measurably different domains (faster shafts, so
    higher fault frequencies and stronger 1x; more noise; a moved resonance).

    Returns:
      MachineConditions whose fields are float64 arrays of shape [num_machines].
    """
    rpm = rng.uniform(1500.0, 1800.0, num_machines) * (1 + 0.6 * shift)
    load = rng.uniform(0.5, 1.0, num_machines)
    noise = rng.uniform(0.1, 0.2, num_machines) * (1 + 2 * shift)
    resonance_hz = 3000.0 * (1 + 0.2 * shift) * rng.uniform(0.9, 1.1, num_machines)
    return MachineConditions(rpm=rpm, load=load, noise=noise, resonance_hz=resonance_hz)


def generate_windows(
    rng: np.random.Generator,
    conditions: MachineConditions,
    labels: np.ndarray,
    window: int = WINDOW,
    geometry: BearingGeometry = BearingGeometry(),
    model: VibrationModel = VibrationModel(),
    severity: np.ndarray | None = None,
) -> np.ndarray:
    """Simulates one vibration window per label (the signal model of the module docstring).

    Args:
      rng: the source of all randomness; the result is a function of its state.
      conditions: each window's operating conditions; fields broadcast to ``labels.shape``
        (use ``plant.take(machine)`` to give each window its machine's conditions).
      labels: int array [N] of class indices into ``CLASSES``.
      window: samples per window, at ``FS_HZ``.
      geometry: the bearing, for the fault frequencies.
      model: the signal model's constants.
      severity: optional float array [N] multiplying each window's impact amplitudes ``A_k``
        (a growing defect strikes harder: see ``hierfl.data.tasks.bearing_rul_data``); None is 1.

    Returns:
      float32 array [N, window] of acceleration in g.
    """
    labels = class_indices(labels, len(CLASSES))
    if window < 1:
        raise DataError(f"window must be a positive number of samples, got {window}")
    n = labels.shape[0]
    per_window = MachineConditions(
        *(
            np.broadcast_to(np.asarray(getattr(conditions, f.name), np.float64), (n,))
            for f in dataclasses.fields(conditions)
        )
    )
    if n == 0:
        return np.zeros((0, window), np.float32)
    severity = (
        np.ones(n) if severity is None else np.broadcast_to(np.asarray(severity, np.float64), (n,))
    )
    # One ring-down length (and so one FFT size) for the whole call: 6 tau of the slowest decay.
    tau_max = 1 / (2 * np.pi * model.damping_ratio * per_window.resonance_hz.min())
    ring = int(math.ceil(6 * tau_max * FS_HZ))
    x = np.empty((n, window), np.float32)
    for start in range(0, n, _CHUNK):
        batch = slice(start, start + _CHUNK)
        x[batch] = _simulate(
            rng,
            per_window.take(batch),
            labels[batch],
            window,
            ring,
            geometry,
            model,
            severity[batch],
        )
    return x


def _simulate(
    rng: np.random.Generator,
    conditions: MachineConditions,
    labels: np.ndarray,
    window: int,
    ring: int,
    geometry: BearingGeometry,
    model: VibrationModel,
    severity: np.ndarray,
) -> np.ndarray:
    """``generate_windows`` for a batch of n windows (fields float64 [n]); ``ring`` in samples."""
    n = labels.shape[0]
    shaft_hz = conditions.rpm / 60
    impulses = _impulse_trains(rng, conditions, labels, shaft_hz, window + ring, geometry, model)
    impulses *= severity[:, None]

    # Every impulse rings the resonance: a linear convolution, done as an FFT product. The
    # first `ring` samples are lead-in, so impacts just before the window ring into it.
    tau_s = 1 / (2 * np.pi * model.damping_ratio * conditions.resonance_hz)
    lag_s = np.arange(ring) / FS_HZ
    resonance_hz = conditions.resonance_hz[:, None]
    ringdown = np.exp(-lag_s / tau_s[:, None]) * np.sin(2 * np.pi * resonance_hz * lag_s)
    nfft = 1 << (window + 2 * ring - 2).bit_length()
    response = np.fft.irfft(np.fft.rfft(impulses, nfft) * np.fft.rfft(ringdown, nfft), nfft)
    x = response[:, ring : ring + window].astype(np.float32)

    t_s = (np.arange(window) / FS_HZ).astype(np.float32)
    speed_ratio = conditions.rpm / model.reference_rpm
    for harmonic, amplitude_g in ((1, model.shaft_1x_g * speed_ratio**2), (2, model.shaft_2x_g)):
        amplitude = (amplitude_g * rng.uniform(0.5, 1.5, n)).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        omega = (2 * np.pi * harmonic * shaft_hz).astype(np.float32)
        x += amplitude[:, None] * np.sin(omega[:, None] * t_s + phase[:, None])
    x += conditions.noise.astype(np.float32)[:, None] * rng.standard_normal((n, window), np.float32)
    return x


def _impulse_trains(
    rng: np.random.Generator,
    conditions: MachineConditions,
    labels: np.ndarray,
    shaft_hz: np.ndarray,
    span: int,
    geometry: BearingGeometry,
    model: VibrationModel,
) -> np.ndarray:
    """The impacts of each window as weighted unit impulses: float64 [n, span], in g.

    Impact times are rounded to the nearest sample (error <= 42 us, below the ~100 us slip jitter).
    """
    n = labels.shape[0]
    freqs = fault_frequencies(geometry, shaft_hz)
    zero = np.zeros(n)
    fault_hz = np.choose(labels, [zero, freqs["bpfo"], freqs["bpfi"], 2 * freqs["bsf"]])
    modulation_hz = np.choose(labels, [zero, zero, shaft_hz, freqs["ftf"]])
    depth = np.where(labels >= INNER, 1 - model.modulation_floor, 0.0)

    span_s = span / FS_HZ
    num_impacts = int(math.ceil(span_s * fault_hz.max())) + 1
    period_s = np.where(fault_hz > 0, 1 / np.maximum(fault_hz, 1e-9), 0.0)[:, None]
    start = rng.uniform(0, 1, (n, 1))
    jitter = model.slip * rng.standard_normal((n, num_impacts))
    times_s = (np.arange(num_impacts) + start + jitter) * period_s
    psi = rng.uniform(0, 2 * np.pi, (n, 1))
    cycle = np.cos(2 * np.pi * modulation_hz[:, None] * times_s + psi)
    load_zone = 1 - depth[:, None] * (1 - cycle) / 2
    strength = np.exp(model.impact_spread * rng.standard_normal((n, num_impacts)))
    speed_ratio = conditions.rpm / model.reference_rpm
    amplitude = model.impact_g * (conditions.load * speed_ratio)[:, None] * load_zone * strength

    sample = np.rint(times_s * FS_HZ).astype(np.int64)
    hit = (fault_hz[:, None] > 0) & (sample >= 0) & (sample < span)
    flat = (np.arange(n)[:, None] * span + sample)[hit]
    return np.bincount(flat, weights=amplitude[hit], minlength=n * span).reshape(n, span)


def generate_plant(
    seed: int,
    plant_index: int,
    num_machines: int,
    windows_per_machine: int,
    shift: float,
    window: int = WINDOW,
    classes: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelled vibration windows of one plant's machines.

    Each machine draws its conditions from the plant's distribution (``plant_conditions`` with
    ``shift``), then records ``windows_per_machine`` windows whose classes are balanced within
    the machine (counts differ by at most one, and the plant as a whole is balanced) and
    shuffled. ``classes`` (indices into ``CLASSES``, default all) limits the plant to the
    conditions its machines develop: a plant whose bearings never fail at the inner race
    has no inner-race windows. The result depends only on ``(seed, plant_index)`` and the sizes: the plant's
    stream is ``np.random.default_rng([seed, plant_index])``, independent of how many plants
    exist.

    Returns:
      ``(x, y, machine)``: x float32 [M * W, window] in g; y int32 [M * W] class indices;
      machine int32 [M * W] the window's machine in [0, M), in blocks of W, machine-major.
    """
    if seed < 0 or plant_index < 0:
        raise DataError(f"seed and plant_index must be non-negative, got {seed} and {plant_index}")
    if num_machines < 1 or windows_per_machine < 1:
        raise DataError(
            f"a plant needs at least one machine and one window per machine, "
            f"got {num_machines} machines x {windows_per_machine} windows"
        )
    if not 0.0 <= shift <= 1.0:
        raise DataError(f"shift is a plant's severity in [0, 1], got {shift}")
    kinds = np.arange(len(CLASSES)) if classes is None else np.asarray(classes, np.int64)
    if (
        kinds.size == 0
        or kinds.min() < 0
        or kinds.max() >= len(CLASSES)
        or len(np.unique(kinds)) != kinds.size
    ):
        raise DataError(f"classes must be distinct indices into {CLASSES}, got {classes}")
    rng = np.random.default_rng([seed, plant_index])
    machines = plant_conditions(rng, num_machines, shift)
    total = num_machines * windows_per_machine
    # Consecutive classes per machine, continuing across machines, balance both levels.
    y = kinds[np.arange(total) % len(kinds)].reshape(num_machines, windows_per_machine)
    y = rng.permuted(y, axis=1).reshape(total).astype(np.int32)
    machine = np.repeat(np.arange(num_machines, dtype=np.int32), windows_per_machine)
    x = generate_windows(rng, machines.take(machine), y, window)
    return x, y, machine
