"""From a topology to a Plan: the task's data, divided plant -> line -> device, as arrays.

A task that reads files takes each device's examples from its own files and each plant's
test examples from the plant's test data (`hierfl.data.device_files`); what follows is
how a task that generates its data divides it.

The plan is everything the simulator and the runtime derive from a topology before the
first round: which edge each device reports to, and each device's training shard. Data is
divided top-down: the task gives each plant its train/test pool; a plant's pool is split
among its lines (stratified; a line with `samples_per_device` takes exactly devices x that
many, the others share the rest by device count); each line's partitioner (iid,
dirichlet, quantity) divides the line's pool among its devices. Deterministic in the seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from hierfl.data import census, device_files, partition
from hierfl.data.census import Census
from hierfl.data.loading import check_names, topology_task
from hierfl.data.tasks import PlantData, PlantRequest, Task
from hierfl.data.tasks.base import plant_data
from hierfl.errors import DataError
from hierfl.topology import DataSpec, Line, Plant, Topology


@dataclasses.dataclass(frozen=True)
class DeviceShards:
    """All devices' training data, padded to a common length.

    x `[D, N, *input_shape]` float32, y `[D, N]` int32 (labels) or `[D, N, H]` float32
    (regression targets); only the first `counts[d]` rows of device d are real (the rest
    are zeros and never sampled).
    """

    x: np.ndarray
    y: np.ndarray
    counts: np.ndarray

    @property
    def num_devices(self) -> int:
        return len(self.counts)


@dataclasses.dataclass(frozen=True)
class TestSet:
    """The held-out examples of all plants, with the plant (edge) index of each."""

    x: np.ndarray
    y: np.ndarray
    plant: np.ndarray


@dataclasses.dataclass(frozen=True)
class Plan:
    """A topology made concrete: the task, device -> edge map, device shards and test set."""

    topology: Topology
    task: Task
    device_edge: np.ndarray
    shards: DeviceShards
    test: TestSet
    census: Census | None = None
    """The federation's example count and, for a task that standardizes, the channels'
    mean and std; `shards` and `test` are standardized with them already."""
    rows_dropped: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Bad rows that `on_bad_rows = "drop"` dropped, by device id or `<plant> test data`."""

    @property
    def num_edges(self) -> int:
        return len(self.topology.plants)


def make_plan(topology: Topology) -> Plan:
    """Builds the plan; raises DataError if the task cannot supply what the topology asks.

    A topology changed in code (`with_federation(task=...)`) is not checked against our
    registries, so its names are checked here first: TopologyError, as at load time.
    """
    check_names(topology)
    task = topology_task(topology)
    device_edge = np.concatenate(
        [np.full(p.num_devices, i, np.int32) for i, p in enumerate(topology.plants)]
    )
    if task.reads_files:
        read = device_files.read_all(topology, task)
        plan = Plan(
            topology,
            task,
            device_edge,
            pad_shards(read.devices),
            stack_test_sets(read.tests),
            rows_dropped=read.rows_dropped,
        )
        return with_census(plan)
    check_plant_classes(topology, task)
    requests = plant_requests(topology, task)
    made = task.make_plant_data(requests, topology.test_fraction, topology.federation.seed)
    pools: list[PlantPool] = []
    test_sets: list[tuple[np.ndarray, np.ndarray]] = []
    # One plant at a time is made and divided; its training pool is kept whole (one large
    # array, not a small copy per device that the allocator would keep after the padding).
    for index, data in enumerate(made):
        rows = divide_plant_rows(
            topology.plants[index], data.y_train, plant_rng(topology, index), task.strata
        )
        pools.append(PlantPool(data.x_train, data.y_train, rows))
        test_sets.append((data.x_test, data.y_test))
        del data
    shards = gather_shards(pools)
    plan = Plan(topology, task, device_edge, shards, stack_test_sets(test_sets))
    return with_census(plan)


def without_training_rows(plan: Plan) -> Plan:
    """`plan` without its devices' training rows (`shards.x` and `shards.y` `[D, 0, ...]`);
    the counts, the test set and the census stay. For a caller that has laid the rows out
    elsewhere (the simulator's chunks), so that they are not held twice."""
    shards = plan.shards
    return dataclasses.replace(
        plan,
        shards=DeviceShards(
            x=np.zeros((shards.num_devices, 0, *shards.x.shape[2:]), shards.x.dtype),
            y=np.zeros((shards.num_devices, 0, *shards.y.shape[2:]), shards.y.dtype),
            counts=shards.counts,
        ),
    )


def with_census(plan: Plan) -> Plan:
    """The plan with its census, and its examples standardized where the task says so (the
    sums the runtime's census adds up the tree, here over every device's rows at once)."""
    task, shards = plan.task, plan.shards
    found = census.of_shards(shards.x, shards.counts, task.input_shape, task.standardize)
    shards = dataclasses.replace(shards, x=found.standardize(shards.x))
    return dataclasses.replace(
        plan, shards=shards, test=standardized(plan.test, found), census=found
    )


def standardized(test: TestSet, found: Census) -> TestSet:
    """`test` with its examples standardized by the census `found` (as they are, without statistics)."""
    return dataclasses.replace(test, x=found.standardize(test.x))


def plant_requests(topology: Topology, task: Task) -> list[PlantRequest]:
    return [plant_request(plant, index, task) for index, plant in enumerate(topology.plants)]


def plant_devices(
    topology: Topology, task: Task, index: int, data: PlantData
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each device's (x, y) of plant number `index`, from the plant's data, as `make_plan`
    divides it (deterministic in the seed and the plant's index alone)."""
    return divide_plant(topology.plants[index], data, plant_rng(topology, index), task.strata)


def plant_rng(topology: Topology, index: int) -> np.random.Generator:
    """The generator that divides plant number `index` (deterministic in the seed)."""
    return np.random.default_rng([topology.federation.seed, 4, index])


def one_plant(
    topology: Topology, index: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], TestSet]:
    """Plant number `index`'s part of the plan of a task that generates its data: its devices'
    (x, y), in device order, and its test set; exactly the plan's, without the other plants'
    data (made only where the task cannot make one plant's alone: `tasks.base.plant_data`)."""
    check_names(topology)
    task = topology_task(topology)
    check_plant_classes(topology, task)
    data = plant_data(
        task,
        plant_requests(topology, task),
        index,
        topology.test_fraction,
        topology.federation.seed,
    )
    test = stack_test_sets([(data.x_test, data.y_test)])
    return plant_devices(topology, task, index, data), TestSet(
        test.x, test.y, np.full(len(test.y), index, np.int32)
    )


def plant_counts(topology: Topology, index: int, devices: Sequence[tuple]) -> np.ndarray:
    """Every device's example count, `[devices]` int32, with plant number `index`'s devices'
    from `devices` (their (x, y)) and the others' zero (a plant's nodes know no more)."""
    counts = np.zeros(topology.num_devices, np.int32)
    first = topology.plants[index].devices[0].index
    counts[first : first + len(devices)] = [len(y) for _, y in devices]
    return counts


def held_out_examples(topology: Topology, plants: Sequence[int] | None = None) -> TestSet:
    """The held-out examples of the plants at indices `plants` (all by default), tagged with
    their plant index: each plant's test data file, or its part of a generated plan."""
    task = topology_task(topology)
    chosen = range(len(topology.plants)) if plants is None else plants
    if task.reads_files:
        parts = [device_files.read_plant_test(topology, task, topology.plants[i]) for i in chosen]
        sets = [TestSet(p.x, p.y, np.full(len(p.y), i, np.int32)) for i, p in zip(chosen, parts)]
    else:
        sets = [one_plant(topology, i)[1] for i in chosen]
    return TestSet(
        x=np.concatenate([s.x for s in sets]).astype(np.float32),
        y=np.concatenate([s.y for s in sets]),
        plant=np.concatenate([s.plant for s in sets]),
    )


def check_plant_classes(topology: Topology, task: Task) -> None:
    """DataError naming the plant if its `classes` are not all the task's."""
    for i, plant in enumerate(topology.plants):
        unknown = [c for c in plant.classes or () if c not in task.plant_classes]
        if unknown:
            known = ", ".join(task.plant_classes) or "none: the task cannot limit a plant's classes"
            raise DataError(
                f"{topology.source}: plants[{i}].classes: task {task.name!r} has no class {unknown[0]!r} (classes: {known})"
            )


def plant_request(plant: Plant, index: int, task: Task) -> PlantRequest:
    """What a plant needs: exact when every line's samples per device is known, else a fair share."""
    per_line = [_samples_per_device(line.data, task) for line in plant.lines]
    exact = (
        None
        if None in per_line
        else sum(n * len(line.devices) for n, line in zip(per_line, plant.lines))
    )
    return PlantRequest(plant.name, index, plant.num_devices, exact, plant.shift, plant.classes)


def _samples_per_device(data: DataSpec, task: Task) -> int | None:
    return (
        data.samples_per_device
        if data.samples_per_device is not None
        else task.default_samples_per_device
    )


def divide_plant(
    plant: Plant,
    data: PlantData,
    rng: np.random.Generator,
    strata: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each device's (x, y) of the plant, in device order.

    Lines are stratified and lines' partitioners skewed by `strata(y)` (the task's: class
    labels, or bins of a regression target); by default `y` itself (class labels).
    """
    rows = divide_plant_rows(plant, data.y_train, rng, strata)
    return [(data.x_train[r], data.y_train[r]) for r in rows]


def divide_plant_rows(
    plant: Plant,
    y_train: np.ndarray,
    rng: np.random.Generator,
    strata: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Each device's rows of the plant's training pool, in device order (`divide_plant`)."""
    groups = y_train if strata is None else strata(y_train)
    sizes = line_sizes(plant, len(y_train))
    rows = []
    for line, pool in zip(plant.lines, partition.split_stratified(groups, sizes, rng)):
        rows.extend(pool[shard] for shard in divide_line(line, groups[pool], rng))
    return rows


def line_sizes(plant: Plant, pool: int) -> np.ndarray:
    """How many of the plant's `pool` training examples each line gets."""
    exact = [
        line.data.samples_per_device * len(line.devices) if line.data.samples_per_device else None
        for line in plant.lines
    ]
    fixed = sum(n for n in exact if n is not None)
    if fixed > pool:
        raise DataError(
            f"plant {plant.name!r}: lines ask for {fixed} training examples, the plant has {pool}"
        )
    flexible = [i for i, n in enumerate(exact) if n is None]
    shares = (
        partition.proportional_sizes(pool - fixed, [len(plant.lines[i].devices) for i in flexible])
        if flexible
        else []
    )
    sizes = np.array([n if n is not None else 0 for n in exact], dtype=np.int64)
    sizes[flexible] = shares
    return sizes


def divide_line(line: Line, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The line's partitioner applied to its pool: one index array per device."""
    spec, n = line.data, len(line.devices)
    if spec.partition == "iid":
        return partition.iid(len(labels), n, rng)
    if spec.partition == "dirichlet":
        return partition.dirichlet(labels, n, spec.alpha, rng)
    if spec.partition == "quantity":
        return partition.quantity(len(labels), n, spec.sigma, rng)
    raise DataError(f"line {line.name!r}: unknown partition {spec.partition!r}")


def pad_shards(devices: list[tuple[np.ndarray, np.ndarray]]) -> DeviceShards:
    """Stacks per-device (x, y) into zero-padded `[D, N_max, ...]` arrays."""
    counts = np.array([len(y) for _, y in devices], dtype=np.int32)
    capacity = int(counts.max())
    sample_shape = devices[0][0].shape[1:]
    x = np.zeros((len(devices), capacity, *sample_shape), np.float32)
    y = np.zeros((len(devices), capacity, *devices[0][1].shape[1:]), _target_dtype(devices[0][1]))
    for d, (xd, yd) in enumerate(devices):
        x[d, : len(yd)] = xd
        y[d, : len(yd)] = yd
    return DeviceShards(x, y, counts)


class PlantPool(NamedTuple):
    """A plant's training examples and each of its devices' rows of them."""

    x: np.ndarray
    y: np.ndarray
    rows: list[np.ndarray]


def gather_shards(pools: list[PlantPool]) -> DeviceShards:
    """Every plant's devices' rows gathered straight into zero-padded `[D, N_max, ...]`
    arrays: as `pad_shards` of the devices' (x, y), without a copy per device.

    Empties `pools` as it goes, so each plant's pool is freed once its devices are copied:
    the examples are held about once, not twice.
    """
    counts = np.array([len(r) for pool in pools for r in pool.rows], dtype=np.int32)
    capacity = int(counts.max())
    first = pools[0]
    x = np.zeros((len(counts), capacity, *first.x.shape[1:]), np.float32)
    y = np.zeros((len(counts), capacity, *first.y.shape[1:]), _target_dtype(first.y))
    del first
    d = 0
    while pools:
        pool = pools.pop(0)
        for rows in pool.rows:
            x[d, : len(rows)] = pool.x[rows]
            y[d, : len(rows)] = pool.y[rows]
            d += 1
    return DeviceShards(x, y, counts)


def stack_test_sets(plants: list[tuple[np.ndarray, np.ndarray]]) -> TestSet:
    """All plants' (x_test, y_test) in one set, tagged with their plant index."""
    return TestSet(
        x=np.concatenate([x for x, _ in plants]).astype(np.float32, copy=False),
        y=np.concatenate([y for _, y in plants]).astype(_target_dtype(plants[0][1]), copy=False),
        plant=np.concatenate([np.full(len(y), i, np.int32) for i, (_, y) in enumerate(plants)]),
    )


def _target_dtype(y: np.ndarray) -> type:
    """int32 for class labels, float32 for regression targets."""
    return np.int32 if np.issubdtype(np.asarray(y).dtype, np.integer) else np.float32
