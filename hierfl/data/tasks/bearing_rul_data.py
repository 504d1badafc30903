"""Run-to-failure trajectories of faulty rolling bearings: vibration windows labelled with the
remaining useful life (RUL), from the physical model of `hierfl.data.tasks.bearing_data`.

A localized defect, once started, grows until the bearing fails. Each machine records its
bearing's last ``RECORD_HOURS`` hours before failure; a window taken ``rul`` hours before
failure sees a defect of size ``a(rul)`` relative to its size at failure::

    a(rul) = exp(-rul / tau)                       exponential (Paris-law-like) growth
    tau    = TAU_HOURS * U(0.9, 1.1)               hours

and every impact of the window strikes ``FAILURE_SEVERITY * a(rul)`` times as hard as a
fault of the classification task (the ``severity`` of `bearing_data.generate_windows`). So
a defect 80 h from failure (tau about 25 h) strikes at 12 % of the classification task's
strength, under the sensor noise; 10 h from failure at 2x. The fault type (outer race, inner race, ball) fixes the impact rate
and modulation, as in the classification task; the machine's speed, load, noise and
resonance come from `bearing_data.plant_conditions` with the plant's ``shift``.

Sampling: a machine records ``windows_per_machine`` windows at RUL values stratified over
(0, RECORD_HOURS]: window k at ``RECORD_HOURS * (k + u_k) / W``, ``u_k ~ U(0, 1)``, in
shuffled order. So RUL is uniform on (0, RECORD_HOURS] within every machine. A plant's
machines take its fault types in turn (machine m has ``fault_types[m % len]``), so a plant
limited to some fault types never sees the others. Everything is deterministic in the seed.
"""

from __future__ import annotations

import numpy as np

from hierfl.data.tasks import bearing_data
from hierfl.errors import DataError

FAULT_TYPES = ("outer", "inner", "ball")
"""The defects that grow to failure (class names of `bearing_data.CLASSES`)."""

RECORD_HOURS = 100.0
"""How long before failure each machine's recording starts: RUL lies in (0, RECORD_HOURS]."""

TAU_HOURS = 25.0
"""Growth time constant of the defect, before the machine's random factor."""

FAILURE_SEVERITY = 3.0
"""Impact strength at failure, relative to a fault of the classification task."""

_STREAM = 11  # purpose of the trajectory stream: default_rng([seed, _STREAM, plant_index])


def defect_size(rul_hours: np.ndarray, tau_hours: np.ndarray) -> np.ndarray:
    """Defect size relative to its size at failure, ``exp(-rul / tau)``, in (0, 1]."""
    return np.exp(-np.asarray(rul_hours, np.float64) / np.asarray(tau_hours, np.float64))


def generate_machines(
    seed: int,
    plant_index: int,
    num_machines: int,
    windows_per_machine: int,
    shift: float,
    fault_types: tuple[str, ...] = FAULT_TYPES,
    window: int = bearing_data.WINDOW,
    first_machine: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The run-to-failure windows of ``num_machines`` machines of one plant.

    Machines ``first_machine .. first_machine + num_machines - 1`` of the plant: numbering
    lets a caller draw training and test machines from one plant without overlap (each
    machine's draws depend only on ``(seed, plant_index, machine)``).

    Returns:
      ``(x, rul, fault, machine)``: x float32 [M * W, window] in g; rul float64 [M * W] in
      hours; fault int32 [M * W] index into ``FAULT_TYPES``; machine int32 [M * W] (the
      machine's number), machine-major.
    """
    if num_machines < 1 or windows_per_machine < 1:
        raise DataError(
            f"need at least one machine and one window, got {num_machines} x {windows_per_machine}"
        )
    if not 0.0 <= shift <= 1.0:
        raise DataError(f"shift is a plant's severity in [0, 1], got {shift}")
    unknown = [f for f in fault_types if f not in FAULT_TYPES]
    if not fault_types or unknown or len(set(fault_types)) != len(fault_types):
        raise DataError(f"fault_types must be distinct names of {FAULT_TYPES}, got {fault_types}")
    xs, ruls, faults, machines = [], [], [], []
    for m in range(first_machine, first_machine + num_machines):
        rng = np.random.default_rng([seed, _STREAM, plant_index, m])
        conditions = bearing_data.plant_conditions(rng, 1, shift)
        fault = FAULT_TYPES.index(fault_types[m % len(fault_types)])
        tau = TAU_HOURS * rng.uniform(0.9, 1.1)
        rul = (
            RECORD_HOURS
            * (np.arange(windows_per_machine) + rng.uniform(0, 1, windows_per_machine))
            / windows_per_machine
        )
        rul = rng.permutation(rul)
        label = np.full(windows_per_machine, bearing_data.CLASSES.index(FAULT_TYPES[fault]))
        xs.append(
            bearing_data.generate_windows(
                rng,
                conditions.take(np.zeros(windows_per_machine, np.int64)),
                label,
                window,
                severity=FAILURE_SEVERITY * defect_size(rul, tau),
            )
        )
        ruls.append(rul)
        faults.append(np.full(windows_per_machine, fault, np.int32))
        machines.append(np.full(windows_per_machine, m, np.int32))
    return (
        np.concatenate(xs),
        np.concatenate(ruls),
        np.concatenate(faults),
        np.concatenate(machines),
    )
