"""Tests of hierfl.data.plan: a topology made concrete as device shards and a test set.

Expected sizes are worked out by hand from the TOML and scikit-learn's digit class counts
(largest-remainder shares written out in the comments), not with the plan's helpers.
"""

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

from hierfl.data.loading import load_topology
from hierfl.data.plan import make_plan, without_training_rows
from hierfl.errors import DataError
from hierfl.topology import parse_topology

DIGIT_COUNTS = np.bincount(load_digits().target)
TRAIN_POOL_02 = 1438  # 1797 minus round(0.2 * n_c) held out per class: 359


def held_out(counts, test_fraction):
    return np.array([max(1, int(round(test_fraction * c))) for c in counts])


def line_toml(name, devices, **data):
    text = f'\n[[plants.lines]]\nname = "{name}"\ndevices = {devices}\n'
    if data:
        text += "[plants.lines.data]\n" + "".join(
            f"{k} = {v!r}\n".replace("'", '"') for k, v in data.items()
        )
    return text


def topology(plants, *, task="digits", seed=0, test_fraction=0.2, partition="iid"):
    """`plants` is a list of (shift, [line_toml(...), ...])."""
    text = f"""
[federation]
name = "plan-test"
task = "{task}"
cloud_rounds = 1
learning_rate = 0.1
seed = {seed}

[data]
partition = "{partition}"
test_fraction = {test_fraction}

[cloud]
address = "tcp://127.0.0.1:7000"
"""
    for i, (shift, lines) in enumerate(plants):
        text += f'\n[[plants]]\nname = "plant-{i}"\naddress = "tcp://127.0.0.1:{7100 + i}"\nshift = {shift}\n'
        text += "".join(lines)
    return parse_topology(text, "plan-test.toml")


def device_labels(plan, d):
    return plan.shards.y[d, : plan.shards.counts[d]]


def mean_entropy(plan, devices, num_classes=10):
    values = []
    for d in devices:
        p = np.bincount(device_labels(plan, d), minlength=num_classes) / plan.shards.counts[d]
        p = p[p > 0]
        values.append(-(p * np.log(p)).sum())
    return float(np.mean(values))


@pytest.fixture(scope="module")
def demo_plan():
    return make_plan(load_topology("demo"))


# --- the demo preset ---------------------------------------------------------------------


def test_demo_device_edge(demo_plan):
    # plant-a: lines of 5, 5, 4 devices; plant-b: 5, 5.
    np.testing.assert_array_equal(demo_plan.device_edge, [0] * 14 + [1] * 10)
    assert demo_plan.num_edges == 2
    assert demo_plan.shards.num_devices == 24
    assert demo_plan.task.name == "digits"


def test_demo_shards_sizes(demo_plan):
    counts = demo_plan.shards.counts
    # 1438 train examples shared 14 : 10 -> 838.83, 599.17 -> 839, 599.
    assert counts[:14].sum() == 839 and counts[14:].sum() == 599
    # plant-a's lines 5 : 5 : 4 of 839 -> 299.64, 299.64, 239.71 -> 300, 299, 240;
    # plant-b's 5 : 5 of 599 -> 299.5 each -> 300, 299.
    assert [counts[0:5].sum(), counts[5:10].sum(), counts[10:14].sum()] == [300, 299, 240]
    assert [counts[14:19].sum(), counts[19:24].sum()] == [300, 299]
    assert counts.min() >= 1
    assert demo_plan.shards.x.shape == (24, counts.max(), 8, 8, 1)
    assert demo_plan.shards.x.dtype == np.float32
    assert demo_plan.shards.y.dtype == np.int32


def test_demo_uses_every_example_once(demo_plan):
    # No samples_per_device: every train and test example of the pool is placed.
    train = sum(np.bincount(device_labels(demo_plan, d), minlength=10) for d in range(24))
    np.testing.assert_array_equal(train + np.bincount(demo_plan.test.y, minlength=10), DIGIT_COUNTS)


def test_a_plan_without_training_rows_keeps_counts_test_set_and_census(demo_plan):
    slim = without_training_rows(demo_plan)
    assert slim.shards.x.shape == (24, 0, 8, 8, 1) and slim.shards.x.dtype == np.float32
    assert slim.shards.y.shape == (24, 0) and slim.shards.y.dtype == np.int32
    assert slim.shards.counts is demo_plan.shards.counts
    assert slim.test is demo_plan.test and slim.census is demo_plan.census
    assert demo_plan.shards.x.shape[1] > 0  # the plan given is left as it was


def test_padding_rows_are_zero(demo_plan):
    shards = demo_plan.shards
    assert (shards.counts < shards.x.shape[1]).any()  # some device is padded
    for d in range(shards.num_devices):
        n = shards.counts[d]
        assert not shards.x[d, n:].any()
        assert not shards.y[d, n:].any()
        assert shards.x[d, :n].reshape(n, -1).any(axis=1).all()  # real digits are never blank


def test_demo_test_set(demo_plan):
    test = demo_plan.test
    assert len(test.y) == held_out(DIGIT_COUNTS, 0.2).sum() == 359
    assert test.x.shape == (359, 8, 8, 1) and test.x.dtype == np.float32
    assert test.y.dtype == np.int32 and test.plant.dtype == np.int32
    # 359 shared like the train sets, 839 : 599 -> 209.46, 149.54 -> 209, 150.
    np.testing.assert_array_equal(np.bincount(test.plant), [209, 150])
    assert set(np.unique(test.y)) == set(range(10))


def test_demo_deterministic_in_seed(demo_plan):
    again = make_plan(load_topology("demo"))
    np.testing.assert_array_equal(again.shards.x, demo_plan.shards.x)
    np.testing.assert_array_equal(again.shards.y, demo_plan.shards.y)
    np.testing.assert_array_equal(again.test.x, demo_plan.test.x)
    other = make_plan(load_topology("demo").with_federation(seed=1))
    assert not np.array_equal(other.shards.y, demo_plan.shards.y)


# --- data assignment ---------------------------------------------------------------------


def test_test_fraction_sets_the_test_set_size():
    plan = make_plan(
        topology([(0.0, [line_toml("l", 4)]), (0.0, [line_toml("l", 2)])], test_fraction=0.3)
    )
    assert len(plan.test.y) == held_out(DIGIT_COUNTS, 0.3).sum()  # 539
    assert plan.shards.counts.sum() == 1797 - 539
    assert set(np.unique(plan.test.plant)) == {0, 1}


def test_digits_samples_per_device_is_exact():
    plan = make_plan(
        topology(
            [
                (0.0, [line_toml("fixed", 3, samples_per_device=30), line_toml("rest", 2)]),
                (0.0, [line_toml("all-fixed", 4, samples_per_device=25)]),
            ]
        )
    )
    counts = plan.shards.counts
    np.testing.assert_array_equal(counts[:3], [30, 30, 30])
    np.testing.assert_array_equal(counts[5:], [25, 25, 25, 25])
    # plant-1 asks exactly 100; plant-0 (a fair share) gets the other 1338, of which the
    # flexible line takes what the fixed line leaves: 1338 - 90 = 1248, 624 per device.
    np.testing.assert_array_equal(counts[3:5], [624, 624])


def test_bearing_samples_per_device_is_exact():
    plan = make_plan(
        topology(
            [
                (
                    0.0,
                    [
                        line_toml("a", 3, samples_per_device=16),
                        line_toml("b", 2, samples_per_device=24),
                    ],
                ),
                (0.5, [line_toml("c", 4, samples_per_device=10)]),
                (0.0, [line_toml("d", 2)]),  # the task's default, 48
            ],
            task="bearing-fault",
        )
    )
    np.testing.assert_array_equal(plan.shards.counts, [16] * 3 + [24] * 2 + [10] * 4 + [48] * 2)
    np.testing.assert_array_equal(plan.device_edge, [0] * 5 + [1] * 4 + [2] * 2)
    assert plan.shards.x.shape == (11, 48, 2048, 1)
    # Each plant holds out 20 % of its windows, 5 % rounding aside: 96/0.8, 40/0.8, 96/0.8.
    np.testing.assert_array_equal(np.bincount(plan.test.plant), [24, 12, 24])


def test_bearing_samples_per_device_exact_when_rounding_is_tight():
    plan = make_plan(
        topology([(0.0, [line_toml("a", 3, samples_per_device=20)])], task="bearing-fault")
    )
    np.testing.assert_array_equal(plan.shards.counts, [20, 20, 20])


def test_line_partition_overrides_take_effect():
    plan = make_plan(
        topology(
            [
                (
                    0.0,
                    [
                        line_toml("uniform", 8),
                        line_toml("skewed", 7, partition="dirichlet", alpha=0.05),
                        line_toml("sizes", 8, partition="quantity", sigma=2.0),
                    ],
                )
            ],
            partition="iid",
        )
    )
    uniform, skewed, sizes = range(0, 8), range(8, 15), range(15, 23)
    assert mean_entropy(plan, uniform) > 0.9 * math.log(10)
    assert mean_entropy(plan, skewed) < 0.5 * math.log(10)
    iid_counts, quantity_counts = plan.shards.counts[list(uniform)], plan.shards.counts[list(sizes)]
    assert iid_counts.max() - iid_counts.min() <= 1
    assert quantity_counts.max() > 3 * quantity_counts.min()


def test_plant_shift_changes_pixel_statistics():
    plan = make_plan(topology([(0.0, [line_toml("l", 3)]), (1.0, [line_toml("l", 3)])]))

    def on_grid(x):  # raw digits are multiples of 1/16
        return np.mean(np.isclose(x * 16, np.round(x * 16), atol=1e-4))

    shards, test = plan.shards, plan.test
    clean = np.concatenate([shards.x[d, : shards.counts[d]] for d in range(3)])
    shifted = np.concatenate([shards.x[d, : shards.counts[d]] for d in range(3, 6)])
    assert on_grid(clean) == 1.0 and on_grid(test.x[test.plant == 0]) == 1.0
    assert on_grid(shifted) < 0.8 and on_grid(test.x[test.plant == 1]) < 0.8


def test_digits_too_many_for_a_line_names_the_plant():
    t = topology([(0.0, [line_toml("big", 2, samples_per_device=2000), line_toml("other", 2)])])
    with pytest.raises(DataError, match="plant-0"):
        make_plan(t)


def test_digits_too_many_for_a_whole_plant_names_the_plant():
    t = topology([(0.0, [line_toml("big", 2, samples_per_device=2000)])])
    with pytest.raises(DataError, match="plant-0"):
        make_plan(t)


def test_bearing_preset_lines_see_every_class():
    t = load_topology("bearing")
    plan = make_plan(t)
    d = 0
    for plant in t.plants:
        for line in plant.lines:
            labels = np.concatenate(
                [device_labels(plan, i) for i in range(d, d + line.num_devices)]
            )
            counts = np.bincount(labels, minlength=4)
            assert counts.min() >= 0.15 * len(labels), (
                f"{plant.name}/{line.name}: {counts.tolist()}"
            )
            d += line.num_devices


def classes_toml(classes):
    return "classes = [" + ", ".join(f'"{c}"' for c in classes) + "]\n"


@pytest.mark.parametrize(
    ("task", "classes", "names"),
    [
        ("digits", ([1, 7], [0, 3, 8]), [str(d) for d in range(10)]),
        ("steel-defects", ([0, 6], [2, 3, 4]), None),
    ],
)
def test_a_plants_shards_and_test_set_hold_only_its_classes(task, classes, names):
    from hierfl.data.tasks import get_task

    names = names or get_task(task).class_names
    lines = [
        [classes_toml([names[c] for c in classes[0]]), line_toml("l", 3)],
        [classes_toml([names[c] for c in classes[1]]), line_toml("l", 2)],
    ]
    plan = make_plan(topology([(0.0, lines[0]), (0.0, lines[1])], task=task))
    for plant, devices, wanted in ((0, range(0, 3), classes[0]), (1, range(3, 5), classes[1])):
        seen = set(np.concatenate([device_labels(plan, d) for d in devices]).tolist())
        assert seen == set(wanted), (plant, seen)
        assert set(plan.test.y[plan.test.plant == plant].tolist()) == set(wanted)


def test_digits_plants_with_classes_share_a_class_and_use_each_example_once():
    lines = [
        [classes_toml(["1", "2"]), line_toml("l", 2)],
        [classes_toml(["2"]), line_toml("l", 2)],
    ]
    plan = make_plan(topology([(0.0, lines[0]), (0.0, lines[1])]))
    counts = plan.shards.counts
    labels = np.concatenate([device_labels(plan, d) for d in range(4)])
    # Every 1 and 2 is used once, in training or test; plant-1 takes only 2s.
    ones, twos = DIGIT_COUNTS[1], DIGIT_COUNTS[2]
    assert np.sum(labels == 1) + np.sum(plan.test.y == 1) == ones
    assert np.sum(labels == 2) + np.sum(plan.test.y == 2) == twos
    assert counts.sum() + len(plan.test.y) == ones + twos


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"task": "no-such-task"}, "federation.task: unknown task 'no-such-task'"),
        (
            {"model": "transformer"},
            "federation.model: unknown model 'transformer' for task 'digits'",
        ),
        ({"algorithm": "fedmagic"}, "federation.algorithm: unknown value 'fedmagic'"),
    ],
)
def test_make_plan_refuses_unknown_names_as_load_topology_does(override, problem):
    from hierfl.topology import TopologyError

    changed = load_topology("demo").with_federation(**override)
    with pytest.raises(TopologyError) as caught:
        make_plan(changed)
    assert caught.value.problems[0].startswith(problem), caught.value.problems
    assert caught.value.source == "demo"


@pytest.mark.parametrize("preset", ["demo", "bearing"])
def test_one_plant_is_exactly_its_part_of_the_plan(preset):
    from hierfl.data.plan import held_out_examples, one_plant, plant_counts

    topology = load_topology(preset)
    plan = make_plan(topology)
    for index, plant in enumerate(topology.plants):
        devices, test = one_plant(topology, index)
        first = plant.devices[0].index
        assert len(devices) == plant.num_devices
        for offset, (x, y) in enumerate(devices):
            d = first + offset
            count = plan.shards.counts[d]
            assert len(y) == count
            np.testing.assert_array_equal(x, plan.shards.x[d, :count])
            np.testing.assert_array_equal(y, plan.shards.y[d, :count])
        mine = plan.test.plant == index
        np.testing.assert_array_equal(test.x, plan.test.x[mine])
        np.testing.assert_array_equal(test.y, plan.test.y[mine])
        assert set(test.plant.tolist()) == {index}
        held_out = held_out_examples(topology, [index])
        np.testing.assert_array_equal(held_out.y, plan.test.y[mine])
        counts = plant_counts(topology, index, devices)
        span = slice(first, first + plant.num_devices)
        np.testing.assert_array_equal(counts[span], plan.shards.counts[span])
        assert counts.sum() == sum(len(y) for _, y in devices)
