"""Tests of hierfl.runs.metrics (the run directory format) and hierfl.runs.report (plots, summary).

The expected numbers are written out by hand from the synthetic run below, not computed
with the code under test.
"""

import json

import matplotlib.image
import numpy as np
import pytest

from hierfl.runs.metrics import (
    MetricsError,
    MetricsWriter,
    read_metrics,
    read_run_info,
    write_run_info,
)
from hierfl.runs.report import (
    best_round,
    bytes_axis_scale,
    cumulative_bytes,
    edge_to_cloud_ratio,
    final_plant_accuracy,
    format_bytes,
    format_duration,
    plant_accuracy_series,
    run_info_rows,
    total_bytes,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

RUN_INFO = {
    "name": "acme-bearings",
    "task": "vibration",
    "model": "mlp",
    "algorithm": "hierfavg",
    "topology": "presets/two_plants.toml",
    "seed": 7,
    "num_plants": 2,
    "num_devices": 6,
    "cloud_rounds": 3,
    "edge_rounds": 2,
    "local_steps": 5,
    "batch_size": 32,
    "learning_rate": 0.05,
    "started": "2025-01-02T03:04:05+00:00",
    "hierfl_version": "0.1.0",
}

# Per-round bytes; numpy integer and float scalars as the simulator would produce them.
ROUNDS = [
    {
        "round": 1,
        "loss": np.float32(1.5),
        "test_loss": 1.25,
        "accuracy": np.float32(0.5),
        "plant_accuracy": {"plant-b": 0.25, "plant-a": np.float64(0.75)},
        "bytes": {
            "device_to_edge": np.int64(1_200_000),
            "edge_to_device": 1_200_000,
            "edge_to_cloud": 100_000,
            "cloud_to_edge": 100_000,
        },
        "round_seconds": 2.5,
        "elapsed_seconds": 2.5,
        "devices": np.int64(6),
    },
    {
        "round": 2,
        "loss": 0.75,
        "test_loss": 0.875,
        "accuracy": 0.875,
        "plant_accuracy": {"plant-a": 0.875, "plant-b": 0.75},
        "bytes": {
            "device_to_edge": 1_200_000,
            "edge_to_device": 1_200_000,
            "edge_to_cloud": 100_000,
            "cloud_to_edge": 100_000,
        },
        "round_seconds": 3.0,
        "elapsed_seconds": 5.5,
        "devices": 6,
    },
    {
        "round": 3,
        "loss": 0.5,
        "test_loss": 0.625,
        "accuracy": 0.8125,
        "plant_accuracy": {"plant-a": 0.9375, "plant-b": 0.6875},
        "bytes": {
            "device_to_edge": 800_000,
            "edge_to_device": 800_000,
            "edge_to_cloud": 100_000,
            "cloud_to_edge": 100_000,
        },
        "round_seconds": 2.0,
        "elapsed_seconds": 7.5,
        "devices": 4,
    },
]


@pytest.fixture
def run_dir(tmp_path):
    """A finished three-round run: run.json and metrics.jsonl written as the simulator does."""
    write_run_info(tmp_path, RUN_INFO)
    with MetricsWriter(tmp_path) as writer:
        for record in ROUNDS:
            writer.write(record)
    return tmp_path


# --- metrics.py ----------------------------------------------------------------------


def test_read_metrics_round_trips_numpy_values_as_python_numbers(run_dir):
    records = read_metrics(run_dir)
    assert len(records) == 3
    first = records[0]
    assert first["loss"] == 1.5 and type(first["loss"]) is float
    assert first["devices"] == 6 and type(first["devices"]) is int
    assert first["bytes"]["device_to_edge"] == 1_200_000
    assert first["plant_accuracy"] == {"plant-b": 0.25, "plant-a": 0.75}
    assert list(first) == list(ROUNDS[0])  # key order kept
    assert records[2]["accuracy"] == 0.8125


def test_writer_converts_arrays_and_appends_after_reopen(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write({"values": np.arange(3, dtype=np.int32), "scale": np.float32(0.5)})
    with MetricsWriter(tmp_path) as writer:
        writer.write({"flag": np.bool_(True)})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"values": [0, 1, 2], "scale": 0.5},
        {"flag": True},
    ]


def test_writer_flushes_each_record(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write(ROUNDS[0])
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1  # before close
    writer.close()


def test_writer_rejects_unwritable_value_without_writing(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        with pytest.raises(TypeError, match="object"):
            writer.write({"round": 1, "bad": object()})
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_run_info_round_trips(run_dir):
    assert read_run_info(run_dir) == RUN_INFO


def test_malformed_line_names_file_and_line_number(run_dir):
    with (run_dir / "metrics.jsonl").open("a") as file:
        file.write('{"round": 4, "loss": \n')  # line 4: a crash mid-write
    with pytest.raises(MetricsError, match=r"metrics\.jsonl:4: not valid JSON"):
        read_metrics(run_dir)


def test_line_missing_a_field_names_line_and_field(tmp_path):
    record = {key: value for key, value in ROUNDS[1].items() if key != "accuracy"}
    with MetricsWriter(tmp_path) as writer:
        writer.write(ROUNDS[0])
        writer.write(record)
    with pytest.raises(MetricsError, match=r"metrics\.jsonl:2: .*accuracy"):
        read_metrics(tmp_path)


def test_missing_metrics_says_no_metrics_yet(tmp_path):
    with pytest.raises(MetricsError, match="no metrics yet") as error:
        read_metrics(tmp_path)
    assert str(tmp_path / "metrics.jsonl") in str(error.value)


def test_missing_run_info_names_file(tmp_path):
    with pytest.raises(MetricsError, match=r"run\.json"):
        read_run_info(tmp_path)


# --- report.py: numbers --------------------------------------------------------------


def test_cumulative_bytes_are_running_totals(run_dir):
    assert cumulative_bytes(read_metrics(run_dir)) == {
        "device_to_edge": [1_200_000, 2_400_000, 3_200_000],
        "edge_to_device": [1_200_000, 2_400_000, 3_200_000],
        "edge_to_cloud": [100_000, 200_000, 300_000],
        "cloud_to_edge": [100_000, 200_000, 300_000],
    }


def test_total_bytes_and_ratio(run_dir):
    totals = total_bytes(read_metrics(run_dir))
    assert totals == {
        "device_to_edge": 3_200_000,
        "edge_to_device": 3_200_000,
        "edge_to_cloud": 300_000,
        "cloud_to_edge": 300_000,
    }
    assert edge_to_cloud_ratio(totals) == pytest.approx(0.09375)
    assert edge_to_cloud_ratio(dict(totals, device_to_edge=0)) is None


def test_best_round_is_highest_accuracy_earliest_on_ties(run_dir):
    assert best_round(read_metrics(run_dir)) == (2, 0.875)
    tied = [{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": 0.5}]
    assert best_round(tied) == (1, 0.5)
    with_nan = [{"round": 1, "accuracy": float("nan")}, {"round": 2, "accuracy": 0.1}]
    assert best_round(with_nan) == (2, 0.1)


def test_plant_series_sorted_with_nan_for_missing_rounds():
    records = [
        {"plant_accuracy": {"b": 0.5}},
        {"plant_accuracy": {"b": 0.6, "a": 0.7}},
    ]
    series = plant_accuracy_series(records)
    assert list(series) == ["a", "b"]
    assert np.isnan(series["a"][0]) and series["a"][1] == 0.7
    assert series["b"] == [0.5, 0.6]


def test_final_plant_accuracy_sorted_by_name(run_dir):
    final = final_plant_accuracy(read_metrics(run_dir))
    assert list(final.items()) == [("plant-a", 0.9375), ("plant-b", 0.6875)]


@pytest.mark.parametrize(
    "count, text",
    [
        (0, "0 B"),
        (512, "512 B"),
        (999, "999 B"),
        (1_000, "1 kB"),
        (1_500, "1.5 kB"),
        (999_999, "1 MB"),
        (12_345_678, "12.3 MB"),
        (3_200_000_000, "3.2 GB"),
    ],
)
def test_format_bytes(count, text):
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    "seconds, text",
    [(7.5, "7.5 s"), (187.0, "3 min 07 s"), (3_600 * 2 + 5 * 60 + 10, "2 h 05 min")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_bytes_axis_scale():
    assert bytes_axis_scale({"a": 3_200_000, "b": 300_000}) == "log"
    assert bytes_axis_scale({"a": 3_200_000, "b": 1_600_000, "c": 0}) == "linear"
    assert bytes_axis_scale({"a": 0, "b": 0}) == "linear"


def test_run_info_rows_in_documented_order_then_extras():
    info = {"extra": [1, 2], "algorithm": "hierfavg", "name": "x", "learning_rate": 0.05}
    assert run_info_rows(info) == [
        ("name", "x"),
        ("algorithm", "hierfavg"),
        ("learning_rate", "0.05"),
        ("extra", "[1, 2]"),
    ]


# --- report.py: files ----------------------------------------------------------------


def test_write_report_writes_readable_pngs(run_dir):
    written = write_report(run_dir)
    assert [path.name for path in written] == ["accuracy.png", "bytes.png", "loss.png", "report.md"]
    for path in written[:3]:
        assert path.read_bytes()[:8] == PNG_MAGIC
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # not a blank canvas


def test_report_markdown_has_the_numbers(run_dir):
    write_report(run_dir)
    text = (run_dir / "report.md").read_text()
    assert text.startswith("# acme-bearings: vibration, hierfavg")
    assert "| learning_rate | 0.05 |" in text
    assert "Final global test accuracy **81.25%** after cloud round 3" in text
    assert "3 rounds recorded of 3 planned" in text
    assert "Best **87.50%**, reached in round 2" in text
    assert "| plant-a | 93.75% |" in text
    assert "| plant-b | 68.75% |" in text
    assert "| device → edge | 3.2 MB | 3,200,000 |" in text
    assert "| edge → cloud | 300 kB | 300,000 |" in text
    assert "**0.0938**" in text  # 300,000 / 3,200,000
    assert "Wall time **7.5 s**" in text
    for image in ("accuracy.png", "bytes.png", "loss.png"):
        assert f"]({image})" in text


def test_write_report_without_metrics_raises(tmp_path):
    write_run_info(tmp_path, RUN_INFO)
    with pytest.raises(MetricsError, match="no metrics yet"):
        write_report(tmp_path)


def test_write_report_with_empty_metrics_raises(tmp_path):
    write_run_info(tmp_path, RUN_INFO)
    MetricsWriter(tmp_path).close()
    with pytest.raises(MetricsError, match="no cloud round recorded yet"):
        write_report(tmp_path)


# --- a classifier's figures ------------------------------------------------------------

FIGURES = {
    "macro_f1": 0.6905,
    "auroc": 0.9312,
    "per_class": {
        "ok": {"precision": 0.8889, "recall": 0.9524, "f1": 0.9196, "support": 84},
        "fault": {"precision": 0.6, "recall": 0.375, "f1": 0.4616, "support": 16},
    },
    "confusion": [[80, 4], [10, 6]],
    "chance": {"class": "ok", "accuracy": 0.84, "macro_f1": 0.4566},
    "plant_macro_f1": {"plant-b": 0.5, "plant-a": float("nan")},
    "plant_auroc": {"plant-b": 0.875, "plant-a": float("nan")},
    "plant_per_class": {
        "plant-b": {
            "ok": {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 2},
            "fault": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2},
        },
        "plant-a": None,
    },
    "plant_confusion": {"plant-b": [[2, 0], [2, 0]], "plant-a": None},
    "plant_chance": {
        "plant-b": {"class": "ok", "accuracy": 0.5, "macro_f1": 0.3333},
        "plant-a": None,
    },
}


def test_report_shows_a_classifiers_figures_and_chance_level(tmp_path):
    write_run_info(tmp_path, RUN_INFO)
    with MetricsWriter(tmp_path) as writer:
        for record in ROUNDS:
            writer.write({**record, **FIGURES})
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Per class (round 3)" in text
    assert (
        "Global macro F1 **0.691**, AUROC **0.931**. Chance level: always predicting 'ok' "
        "scores 84.00% accuracy, macro F1 0.457." in text
    )
    assert "| class | precision | recall | F1 | support |" in text
    assert "| ok | 0.889 | 0.952 | 0.920 | 84 |" in text
    assert "| fault | 0.600 | 0.375 | 0.462 | 16 |" in text
    assert "| true \\ predicted | ok | fault |\n| --- | --- | --- |\n| ok | 80 | 4 |\n" in text
    assert "| fault | 10 | 6 |" in text
    # Plants sorted by name; plant-a did not report this round.
    assert "| plant | accuracy | macro F1 | AUROC | chance |" in text
    assert "| plant-a | 93.75% | n/a | n/a | n/a |" in text
    assert "| plant-b | 68.75% | 0.500 | 0.875 | 'ok' 50.00%, macro F1 0.333 |" in text
    assert "#### plant-a\n\nNot evaluated in this round." in text
    assert "#### plant-b\n\n| class | precision | recall | F1 | support |" in text
    assert text.index("## Per class") < text.index("## Communication")


def test_report_without_figures_has_no_per_class_section(run_dir):
    write_report(run_dir)
    text = (run_dir / "report.md").read_text()
    assert "Per class" not in text and "Chance level" not in text and "macro F1" not in text
