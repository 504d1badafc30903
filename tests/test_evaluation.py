"""Evaluation as per-plant sums (`hierfl.data.evaluation`): the sums add up to the pooled test
set's, the figures match references computed here with numpy and scikit-learn, and a
simulated run writes them to its records, report and exported model."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

from hierfl.data import classification
from hierfl.data.evaluation import (
    PlantSums,
    combine_plant_sums,
    count_shapes,
    make_evaluator,
    make_plant_evaluator,
    metric_fields,
    padded_batch,
)
from hierfl.data.plan import make_plan
from hierfl.data.tasks import TASKS, PlantData, bearing_rul, digits
from hierfl.data.tasks.models import MLP
from hierfl.inference.artifact import read_artifact, write_artifact
from hierfl.inference.export import export_run
from hierfl.runs.metrics import read_metrics
from hierfl.runs.report import write_report
from hierfl.sim.engine import init_global_model, simulate


def _fault_data(requests, test_fraction, seed):
    """Digits relabelled: a 0 is a fault, every other digit ok (about 10% faults)."""
    for data in digits.TASK.make_plant_data(requests, test_fraction, seed):
        yield PlantData(
            data.x_train,
            (data.y_train == 0).astype(np.int32),
            data.x_test,
            (data.y_test == 0).astype(np.int32),
        )


FAULT = dataclasses.replace(
    digits.TASK,
    name="digits-fault",
    description="digits relabelled: 0 is a fault, anything else ok",
    class_names=("ok", "fault"),
    models={"mlp": lambda rngs: MLP(64, (32,), 2, rngs=rngs)},
    make_plant_data=_fault_data,
)


@pytest.fixture
def fault_task(monkeypatch):
    monkeypatch.setitem(TASKS, FAULT.name, FAULT)
    return FAULT


@pytest.fixture
def fault_plan(fault_task, make_topology):
    return make_plan(make_topology(plants=[[2], [3]], task=fault_task.name))


def reference(model, params, test, plant=None):
    """Each example's true class, predicted class and probability of class 1, for one plant or all."""
    mine = np.ones(len(test.y), bool) if plant is None else test.plant == plant
    logits = np.asarray(jax.jit(model.apply)(params, test.x[mine]), np.float64)
    probability = np.exp(logits - logits.max(axis=1, keepdims=True))
    probability /= probability.sum(axis=1, keepdims=True)
    return np.asarray(test.y[mine]), logits.argmax(axis=1), probability[:, 1]


def confusion_of(true, predicted, classes):
    out = np.zeros((classes, classes), np.int64)
    np.add.at(out, (true, predicted), 1)
    return out


def rank_auroc(true, score):
    """The exact AUROC: the share of (positive, negative) pairs ranked right, ties 1/2."""
    diff = score[true == 1][:, None] - score[true == 0][None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def test_plant_sums_add_up_to_the_pooled_test_sets_evaluation(fault_plan):
    plan, task = fault_plan, fault_plan.task
    model, params = init_global_model(plan)
    test = plan.test
    # Batches that do not divide the test set: the padding rows must not be counted.
    assert len(test.y) % 64 and len(test.y) % 37
    whole = make_evaluator(model, task, test, 2, batch=64)(params)
    sums = [make_plant_evaluator(model, task, test, p, batch=37)(params) for p in range(2)]

    true, predicted, probability = reference(model, params, test)
    assert 0 < predicted.sum() < len(predicted), "the untrained model predicts both classes"
    for p in range(2):
        t, pred, _ = reference(model, params, test, p)
        assert sums[p].count == len(t)
        np.testing.assert_array_equal(sums[p].confusion, confusion_of(t, pred, 2))
        assert sums[p].histogram.shape == (2, classification.BINS)
        np.testing.assert_array_equal(sums[p].histogram.sum(axis=1), np.bincount(t, minlength=2))
    pooled = confusion_of(true, predicted, 2)
    np.testing.assert_array_equal(sums[0].confusion + sums[1].confusion, pooled)
    np.testing.assert_array_equal(whole.classification.confusion, pooled)
    combined = combine_plant_sums(task, sums)
    np.testing.assert_array_equal(combined.classification.confusion, pooled)
    assert combined.classification.auroc == whole.classification.auroc
    assert combined.score == whole.score == (true == predicted).mean()
    assert whole.loss == pytest.approx(
        -np.mean(np.log(np.where(true == 1, probability, 1 - probability))), rel=1e-5
    )

    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=[0, 1], zero_division=0
    )
    found = whole.classification
    np.testing.assert_allclose(found.per_class.precision, precision)
    np.testing.assert_allclose(found.per_class.recall, recall)
    np.testing.assert_allclose(found.per_class.f1, f1)
    np.testing.assert_array_equal(found.per_class.support, support)
    assert found.macro_f1 == pytest.approx(f1_score(true, predicted, average="macro"))
    exact = rank_auroc(true, probability)
    assert exact == pytest.approx(roc_auc_score(true, probability))
    assert found.auroc == pytest.approx(exact, abs=1e-3)
    for p in range(2):
        t, _, prob = reference(model, params, test, p)
        assert whole.plant_classification[p].auroc == pytest.approx(rank_auroc(t, prob), abs=1e-3)
        assert whole.per_plant[p] == sums[p].metric_sums["accuracy"] / sums[p].count
    assert found.chance.majority == 0
    assert found.chance.accuracy == (true == 0).mean()


def test_a_batch_is_cut_from_the_test_set_and_only_the_last_one_padded():
    x, y = np.arange(10.0, dtype=np.float32).reshape(5, 2), np.arange(1, 6, dtype=np.int32)
    first_x, first_y = padded_batch(x, y, 0, 3)
    np.testing.assert_array_equal(first_x, x[:3])
    np.testing.assert_array_equal(first_y, [1, 2, 3])
    last_x, last_y = padded_batch(x, y, 3, 3)
    np.testing.assert_array_equal(last_x, [[6, 7], [8, 9], [0, 0]])
    np.testing.assert_array_equal(last_y, [4, 5, 0])
    assert last_x.dtype == np.float32 and last_y.dtype == np.int32


def test_a_plant_that_did_not_report_has_no_figures(fault_plan):
    plan, task = fault_plan, fault_plan.task
    model, params = init_global_model(plan)
    sums = [make_plant_evaluator(model, task, plan.test, p)(params) for p in range(2)]
    partial = combine_plant_sums(task, [sums[0], None])
    np.testing.assert_array_equal(partial.classification.confusion, sums[0].confusion)
    assert partial.plant_classification[1] is None
    fields = metric_fields(task, partial, ["plant-0", "plant-1"])
    assert fields["macro_f1"] == fields["plant_macro_f1"]["plant-0"]
    assert math.isnan(fields["plant_macro_f1"]["plant-1"])
    assert math.isnan(fields["plant_auroc"]["plant-1"])
    assert fields["plant_confusion"]["plant-1"] is None
    assert fields["plant_per_class"]["plant-1"] is None
    assert fields["plant_chance"]["plant-1"] is None
    nothing = metric_fields(task, combine_plant_sums(task, [None, None]), ["plant-0", "plant-1"])
    assert math.isnan(nothing["macro_f1"]) and nothing["confusion"] is None


def test_only_a_two_class_task_has_a_histogram_and_regression_has_no_counts():
    assert count_shapes(FAULT) == (2, classification.BINS)
    assert count_shapes(digits.TASK) == (10, 0)
    assert count_shapes(bearing_rul.TASK) == (0, 0)
    confusion = np.diag(np.arange(1, 11))
    scores = combine_plant_sums(
        digits.TASK, [PlantSums(55, 11.0, {"accuracy": 55.0}, confusion, np.zeros((0, 0)))]
    )
    fields = metric_fields(digits.TASK, scores, ["p"])
    assert "auroc" not in fields and "plant_auroc" not in fields
    assert fields["macro_f1"] == 1.0 and fields["per_class"]["9"]["support"] == 10
    regression = combine_plant_sums(bearing_rul.TASK, [PlantSums(2, 8.0, {"rmse": 8.0, "mae": 4})])
    assert set(metric_fields(bearing_rul.TASK, regression, ["p"])) == {
        "rmse",
        "mae",
        "plant_rmse",
        "plant_mae",
    }


def test_a_simulated_run_records_reports_and_exports_the_figures(
    fault_task, make_topology, tmp_path
):
    topology = make_topology(
        plants=[[2], [3]], task=fault_task.name, cloud_rounds=2, local_steps=10
    )
    run_dir = tmp_path / "run"
    result = simulate(topology, out=run_dir)
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [1, 2]
    last = records[-1]
    test = result.plan.test
    support = np.bincount(test.y, minlength=2)
    plant_support = [np.bincount(test.y[test.plant == p], minlength=2) for p in range(2)]
    for record in records:
        confusion = np.array(record["confusion"])
        assert confusion.shape == (2, 2) and confusion.sum() == len(test.y)
        np.testing.assert_array_equal(confusion.sum(axis=1), support)
        plants = [np.array(record["plant_confusion"][f"plant-{p}"]) for p in range(2)]
        np.testing.assert_array_equal(plants[0] + plants[1], confusion)
        assert record["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
        assert set(record["per_class"]) == {"ok", "fault"}
        assert record["per_class"]["fault"]["support"] == support[1]
        assert 0.0 <= record["macro_f1"] <= 1.0 and 0.0 <= record["auroc"] <= 1.0
        assert set(record["plant_auroc"]) == set(record["plant_macro_f1"]) == {"plant-0", "plant-1"}
        assert record["chance"] == {
            "class": "ok",
            "accuracy": pytest.approx(support[0] / support.sum()),
            "macro_f1": pytest.approx(support[0] / (support.sum() + support[0])),
        }
        for p in range(2):
            assert record["plant_chance"][f"plant-{p}"]["accuracy"] == pytest.approx(
                plant_support[p][0] / plant_support[p].sum()
            )
    assert last == json.loads(json.dumps(result.history[-1]))

    write_report(run_dir)
    report = (run_dir / "report.md").read_text()
    assert "## Per class (round 2)" in report
    assert f"Global macro F1 **{last['macro_f1']:.3f}**, AUROC **{last['auroc']:.3f}**." in report
    share = 100 * support[0] / support.sum()
    assert f"Chance level: always predicting 'ok' scores {share:.2f}% accuracy, macro F1 " in report
    ok = last["per_class"]["ok"]
    assert (
        f"| ok | {ok['precision']:.3f} | {ok['recall']:.3f} | {ok['f1']:.3f} | {support[0]} |"
        in report
    )
    row = last["confusion"][1]
    assert f"| fault | {row[0]} | {row[1]} |" in report
    assert "| plant | accuracy | macro F1 | AUROC | chance |" in report
    assert "#### plant-1" in report

    artifact = read_artifact(
        write_artifact(tmp_path / "model.hfl", export_run(run_dir, platforms=("cpu",)))
    )
    for key in ("macro_f1", "auroc", "per_class", "confusion", "chance", "plant_confusion"):
        assert artifact.meta.metrics[key] == last[key], key
