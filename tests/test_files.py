"""The built-in loaders on real files in tmp_path: values read, and every refusal's message.

Expected values are written out by hand or computed from the numbers written to the file,
never by the code under test; messages are asserted whole where their format is the contract.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hierfl.data import files
from hierfl.data.files import Schema, read_examples
from hierfl.errors import DataError

CLASSES = Schema(None, class_names=("ok", "failure"))
DROP = Schema(None, class_names=("ok", "failure"), on_bad_rows="drop")
HINT = ' (set on_bad_rows = "drop" to drop such rows)'


def write(path, text: str):
    path.write_text(text)
    return path


def refusal(loader, path, schema=CLASSES) -> str:
    with pytest.raises(DataError) as caught:
        read_examples(loader, path, schema)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- CSV: values ---------------------------------------------------------------------------


def test_csv_reads_float32_features_and_maps_class_names_and_indices(tmp_path):
    path = write(tmp_path / "d1.csv", "temp,vib,label\n1.5,2,ok\n-3,4.25,failure\n5,6e2,1\n0,0,0\n")
    examples = read_examples(files.csv(label="label"), path, CLASSES)
    assert examples.x.dtype == np.float32 and examples.x.flags.c_contiguous
    np.testing.assert_array_equal(
        examples.x, np.array([[1.5, 2], [-3, 4.25], [5, 600], [0, 0]], np.float32)
    )
    assert examples.y.dtype == np.int32
    assert examples.y.tolist() == [0, 1, 1, 0]
    assert examples.dropped == 0


def test_csv_features_come_in_the_listed_order_and_set_the_input_shape(tmp_path):
    path = write(tmp_path / "d1.csv", "a,label,b,c\n1,ok,2,3\n4,failure,5,6\n")
    loader = files.csv(["c", "a", "b"], label="label")
    assert loader.input_shape == (3,)
    assert files.csv(label="label").input_shape is None
    examples = read_examples(loader, path, Schema((3,), class_names=("ok", "failure")))
    np.testing.assert_array_equal(examples.x, [[3, 1, 2], [6, 4, 5]])


def test_csv_regression_targets_are_float32_rows(tmp_path):
    path = write(tmp_path / "d1.csv", "x1,load,x2,wear\n1,0.5,2,10\n3,1.5,4,20\n5,2.5,6,30\n")
    schema = Schema((2,), target_names=("load", "wear"))
    examples = read_examples(files.csv(targets=["load", "wear"]), path, schema)
    np.testing.assert_array_equal(examples.x, [[1, 2], [3, 4], [5, 6]])
    assert examples.y.dtype == np.float32 and examples.y.shape == (3, 2)
    np.testing.assert_array_equal(examples.y, [[0.5, 10], [1.5, 20], [2.5, 30]])


def test_csv_delimiter_column_types_and_spaces_around_numbers(tmp_path):
    path = write(tmp_path / "d1.csv", "a;b;label\n 16777217 ;2.5;ok\n-4;  7 ;failure\n")
    loader = files.csv(label="label", delimiter=";", column_types={"a": pa.int64()})
    examples = read_examples(loader, path, CLASSES)
    np.testing.assert_array_equal(examples.x, np.array([[16777217, 2.5], [-4, 7]], np.float32))


def test_csv_drops_empty_nan_and_infinite_rows_when_asked(tmp_path):
    text = "a,b,label\n1,2,ok\n,3,ok\n4,nan,failure\n5,inf,ok\n6,-inf,ok\n7,8,\n9,10,failure\n"
    examples = read_examples(files.csv(label="label"), write(tmp_path / "d1.csv", text), DROP)
    assert examples.dropped == 5
    np.testing.assert_array_equal(examples.x, [[1, 2], [9, 10]])
    assert examples.y.tolist() == [0, 1]


def test_csv_of_many_batches_concatenates_them_in_order(tmp_path):
    rows = 5000
    a = np.arange(rows, dtype=np.float32) * 0.5
    labels = np.arange(rows) % 2
    lines = [f"{v},{-v},{'failure' if k else 'ok'}" for v, k in zip(a, labels)]
    lines[3000] = "1,nan,ok"  # dropped
    path = write(tmp_path / "d1.csv", "a,b,label\n" + "\n".join(lines) + "\n")
    loader = dataclasses.replace(files.csv(label="label"), block_size=4096)
    examples = read_examples(loader, path, DROP)
    keep = np.arange(rows) != 3000
    assert examples.dropped == 1
    np.testing.assert_array_equal(examples.x, np.stack([a, -a], axis=1)[keep])
    np.testing.assert_array_equal(examples.y, labels[keep])


# --- CSV: refusals -------------------------------------------------------------------------


def test_csv_missing_and_not_a_file(tmp_path):
    assert (
        refusal(files.csv(label="label"), tmp_path / "d1.csv") == f"{tmp_path}/d1.csv: no such file"
    )
    (tmp_path / "dir.csv").mkdir()
    assert refusal(files.csv(label="label"), tmp_path / "dir.csv").endswith("dir.csv: not a file")


def test_csv_empty_file_and_header_only(tmp_path):
    loader = files.csv(label="label")
    assert (
        refusal(loader, write(tmp_path / "d1.csv", ""))
        == f"{tmp_path}/d1.csv: empty file (no header)"
    )
    assert refusal(loader, write(tmp_path / "d2.csv", "a,label\n")) == f"{tmp_path}/d2.csv: no rows"


def test_csv_missing_column_lists_the_columns(tmp_path):
    path = write(tmp_path / "d1.csv", "a,b,c\n1,2,3\n")
    message = refusal(files.csv(["temp", "a"], label="c"), path)
    assert message == f"{path}: missing column 'temp' (columns: a, b, c)"
    assert (
        refusal(files.csv(label="label"), path)
        == f"{path}: missing column 'label' (columns: a, b, c)"
    )


def test_csv_extra_column_is_refused_only_when_features_are_listed(tmp_path):
    path = write(tmp_path / "d1.csv", "a,x,b,label\n1,2,3,ok\n")
    message = refusal(files.csv(["a", "b"], label="label"), path)
    assert message == (
        f"{path}: extra column 'x' (the task reads: a, b, label); list it in features or remove it"
    )
    np.testing.assert_array_equal(
        read_examples(files.csv(label="label"), path, CLASSES).x, [[1, 2, 3]]
    )


def test_csv_not_a_number_names_row_and_column(tmp_path):
    path = write(tmp_path / "d1.csv", "a,temp,label\n1,2,ok\n3,4,ok\n5,abc,ok\n")
    assert (
        refusal(files.csv(label="label"), path)
        == f"{path}: row 3, column 'temp': not a number: 'abc'"
    )
    # text is refused under "drop" too: it is not a missing measurement
    assert refusal(files.csv(label="label"), path, DROP).endswith(
        "row 3, column 'temp': not a number: 'abc'"
    )


@pytest.mark.parametrize(
    "cell, shown",
    [("nan", "NaN"), ("NaN", "NaN"), ("inf", "inf"), ("-inf", "-inf"), ("", "empty cell")],
)
def test_csv_bad_values_are_refused_with_the_hint(tmp_path, cell, shown):
    path = write(tmp_path / "d1.csv", f"a,temp,label\n1,2,ok\n3,{cell},ok\n")
    assert refusal(files.csv(label="label"), path) == f"{path}: row 2, column 'temp': {shown}{HINT}"


def test_csv_first_bad_cell_is_the_first_row_then_the_leftmost_column(tmp_path):
    text = "a,b,c,label\n1,2,3,ok\n4,5,xyz,ok\n6,nan,7,ok\n8,9,10,ok\n"
    path = write(tmp_path / "d1.csv", text)
    assert refusal(files.csv(label="label"), path).endswith(
        "row 2, column 'c': not a number: 'xyz'"
    )
    text = "a,b,c,label\n1,2,3,ok\n4,nan,xyz,ok\n"
    path = write(tmp_path / "d2.csv", text)
    assert refusal(files.csv(label="label"), path).endswith(f"row 2, column 'b': NaN{HINT}")
    # under "drop" the NaN row is droppable, the text is not
    assert refusal(files.csv(label="label"), path, DROP).endswith(
        "row 2, column 'c': not a number: 'xyz'"
    )
    path = write(tmp_path / "d3.csv", "a,b,label\n1,2,ok\n3,nan,ok\n4,5,ok\nq,6,ok\n")
    assert refusal(files.csv(label="label"), path, DROP).endswith(
        "row 4, column 'a': not a number: 'q'"
    )


def test_csv_bad_cell_in_a_later_batch_keeps_its_row_number(tmp_path):
    lines = [f"{i},{i * 2},ok" for i in range(20000)]
    lines[14321] = "1,2x,ok"
    lines[17000] = "1,nan,ok"
    path = write(tmp_path / "d1.csv", "a,b,label\n" + "\n".join(lines) + "\n")
    loader = dataclasses.replace(files.csv(label="label"), block_size=8192)
    assert refusal(loader, path) == f"{path}: row 14322, column 'b': not a number: '2x'"
    lines[14321] = "1,2,ok"
    path = write(tmp_path / "d2.csv", "a,b,label\n" + "\n".join(lines) + "\n")
    assert refusal(loader, path) == f"{path}: row 17001, column 'b': NaN{HINT}"
    assert read_examples(loader, path, DROP).dropped == 1


def test_csv_labels_that_are_not_classes(tmp_path):
    path = write(tmp_path / "d1.csv", "a,label\n1,ok\n2,ok\n3,ok\n4,failure\n5,brokn\n")
    assert refusal(files.csv(label="label"), path) == (
        f"{path}: row 5, column 'label': 'brokn' is not a class (classes: ok, failure)"
    )
    path = write(tmp_path / "d2.csv", "a,label\n1,0\n2,2\n")
    assert refusal(files.csv(label="label"), path) == (
        f"{path}: row 2, column 'label': '2' is not a class (classes: ok, failure; or their indices 0..1)"
    )
    path = write(tmp_path / "d3.csv", "a,label\n1,OK\n")  # names match exactly
    assert "'OK' is not a class" in refusal(files.csv(label="label"), path)


def test_csv_all_rows_dropped(tmp_path):
    path = write(tmp_path / "d1.csv", "a,label\nnan,ok\n,ok\ninf,failure\n")
    assert (
        refusal(files.csv(label="label"), path, DROP)
        == f"{path}: no rows left after dropping 3 bad rows"
    )


def test_csv_shape_and_task_kind_against_the_schema(tmp_path):
    path = write(tmp_path / "d1.csv", "a,b,label\n1,2,ok\n")
    schema = Schema((6,), class_names=("ok", "failure"))
    assert refusal(files.csv(label="label"), path, schema) == (
        f"{path}: examples have shape (2,), the task's input is (6,)"
    )
    regression = Schema(None, target_names=("wear",))
    assert (
        "reads class labels from column 'label', but the task predicts targets (wear)"
        in refusal(files.csv(label="label"), path, regression)
    )
    two = Schema(None, target_names=("load", "wear"))
    assert "reads 1 target columns (b), the task predicts 2 (load, wear)" in refusal(
        files.csv(targets=["b"]), path, two
    )


def test_csv_empty_label_and_nan_target(tmp_path):
    path = write(tmp_path / "d1.csv", "a,label\n1,ok\n2,\n")
    assert (
        refusal(files.csv(label="label"), path)
        == f"{path}: row 2, column 'label': empty cell{HINT}"
    )
    path = write(tmp_path / "d2.csv", "a,wear,load\n1,2,3\n4,5,-inf\n")
    schema = Schema(None, target_names=("wear", "load"))
    loader = files.csv(targets=["wear", "load"])
    assert refusal(loader, path, schema) == f"{path}: row 2, column 'load': -inf{HINT}"


def test_csv_parse_error_is_one_line(tmp_path):
    path = write(tmp_path / "d1.csv", "a,label\n1,ok\n2,ok,3\n")
    assert refusal(files.csv(label="label"), path).startswith(
        f"{path}: cannot read: CSV parse error"
    )


# --- Parquet -------------------------------------------------------------------------------


def write_parquet(path, columns: dict, **kwargs):
    pq.write_table(pa.table(columns), path, **kwargs)
    return path


def test_parquet_reads_mixed_numeric_types_and_string_labels(tmp_path):
    path = write_parquet(
        tmp_path / "d1.parquet",
        {
            "a": pa.array([1, 2, 3], pa.int64()),
            "b": pa.array([0.5, 1.5, -2.5], pa.float64()),
            "label": ["failure", "ok", "1"],
        },
    )
    loader = files.parquet(["b", "a"], label="label")
    assert loader.input_shape == (2,)
    examples = read_examples(loader, path, Schema((2,), class_names=("ok", "failure")))
    assert examples.x.dtype == np.float32 and examples.y.dtype == np.int32
    np.testing.assert_array_equal(examples.x, [[0.5, 1], [1.5, 2], [-2.5, 3]])
    assert examples.y.tolist() == [1, 0, 1]


def test_parquet_integer_and_dictionary_labels(tmp_path):
    path = write_parquet(
        tmp_path / "d1.parquet",
        {"a": [1.0, 2.0], "label": pa.array(["ok", "failure"]).dictionary_encode()},
    )
    assert read_examples(files.parquet(label="label"), path, CLASSES).y.tolist() == [0, 1]
    path = write_parquet(tmp_path / "d2.parquet", {"a": [1.0, 2.0, 3.0], "label": [1, 0, 7]})
    assert refusal(files.parquet(label="label"), path) == (
        f"{path}: row 3, column 'label': 7 is not a class (classes: ok, failure; or their indices 0..1)"
    )


def test_parquet_regression(tmp_path):
    path = write_parquet(tmp_path / "d1.parquet", {"x": [1.0, 2.0], "wear": [0.25, 0.75]})
    examples = read_examples(
        files.parquet(targets=["wear"]), path, Schema(None, target_names=("wear",))
    )
    np.testing.assert_array_equal(examples.y, np.array([[0.25], [0.75]], np.float32))


def test_parquet_nulls_nan_and_text_across_batches(tmp_path):
    a = np.arange(1000, dtype=np.float64)
    b = a.tolist()
    b[700] = None
    path = write_parquet(
        tmp_path / "d1.parquet", {"a": a, "b": b, "label": ["ok"] * 1000}, row_group_size=300
    )
    loader = dataclasses.replace(files.parquet(label="label"), batch_size=128)
    assert refusal(loader, path) == f"{path}: row 701, column 'b': empty cell{HINT}"
    examples = read_examples(loader, path, DROP)
    assert examples.dropped == 1 and examples.x.shape == (999, 2)
    np.testing.assert_array_equal(examples.x[:, 0], np.delete(a, 700).astype(np.float32))
    text = [str(v) for v in a]
    text[555] = "n/a"
    path = write_parquet(tmp_path / "d2.parquet", {"a": text, "label": ["ok"] * 1000})
    assert refusal(loader, path) == f"{path}: row 556, column 'a': not a number: 'n/a'"


def test_parquet_refusals(tmp_path):
    loader = files.parquet(label="label")
    assert refusal(loader, tmp_path / "d1.parquet") == f"{tmp_path}/d1.parquet: no such file"
    assert (
        refusal(loader, write(tmp_path / "d2.parquet", "")) == f"{tmp_path}/d2.parquet: empty file"
    )
    message = refusal(loader, write(tmp_path / "d3.parquet", "a,b\n1,2\n"))
    assert message.startswith(f"{tmp_path}/d3.parquet: cannot read: ")
    path = write_parquet(
        tmp_path / "d4.parquet",
        {"a": pa.array([], pa.float32()), "label": pa.array([], pa.string())},
    )
    assert refusal(loader, path) == f"{path}: no rows"
    path = write_parquet(tmp_path / "d5.parquet", {"a": [1.0], "x": [2.0], "label": ["ok"]})
    assert refusal(files.parquet(["a"], label="label"), path).endswith(
        "extra column 'x' (the task reads: a, label); list it in features or remove it"
    )
    assert refusal(files.parquet(["temp"], label="label"), path).endswith(
        "missing column 'temp' (columns: a, x, label)"
    )
    path = write_parquet(
        tmp_path / "d6.parquet", {"when": pa.array([1], pa.date32()), "label": ["ok"]}
    )
    assert refusal(loader, path) == f"{path}: column 'when' holds date32[day], not numbers"


# --- npz / npy -----------------------------------------------------------------------------


def test_npz_converts_to_float32_and_maps_string_labels(tmp_path):
    path = tmp_path / "d1.npz"
    x = np.arange(12, dtype=np.float64).reshape(3, 2, 2) / 4
    np.savez(path, x=x, y=np.array(["failure", "ok", "0"]))
    examples = read_examples(files.npz(), path, Schema((2, 2), class_names=("ok", "failure")))
    assert examples.x.dtype == np.float32 and examples.x.flags.c_contiguous
    np.testing.assert_array_equal(examples.x, x.astype(np.float32))
    assert examples.y.dtype == np.int32 and examples.y.tolist() == [1, 0, 0]
    assert files.npz().input_shape is None and files.npy().input_shape is None


def test_npz_regression_with_named_arrays(tmp_path):
    path = tmp_path / "d1.npz"
    np.savez(path, features=np.ones((4, 3), np.int16), rul=np.array([1.0, 2.0, 3.0, 4.0]))
    examples = read_examples(
        files.npz(x="features", y="rul"), path, Schema(None, target_names=("rul",))
    )
    assert examples.y.dtype == np.float32 and examples.y.shape == (4, 1)
    np.testing.assert_array_equal(examples.y[:, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(examples.x, np.ones((4, 3), np.float32))


def test_npz_refusals(tmp_path):
    path = tmp_path / "d1.npz"
    np.savez(path, a=np.zeros((2, 7)), b=np.zeros(2))
    assert refusal(files.npz(), path) == f"{path}: no array 'x' (arrays: a, b)"
    assert refusal(files.npz(x="a", y="b"), path, Schema((6,), class_names=("ok", "failure"))) == (
        f"{path}: examples have shape (7,), the task's input is (6,)"
    )
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros(2, np.int64))
    assert refusal(files.npz(), path) == f"{path}: x has 3 rows, y has 2"
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros((3, 3)))
    assert refusal(files.npz(), path, Schema(None, target_names=("a", "b"))) == (
        f"{path}: y has shape (3, 3), the task predicts 2 targets per row (a, b)"
    )
    assert refusal(files.npz(), write(tmp_path / "d2.npz", "not a zip")).startswith(
        f"{tmp_path}/d2.npz: cannot read: "
    )
    np.save(tmp_path / "d3.npy", np.zeros(3))
    assert refusal(files.npz(), tmp_path / "d3.npy").endswith(
        "d3.npy: not an .npz archive (one array, no names)"
    )


def test_npz_nan_and_labels_name_the_row_and_index(tmp_path):
    path = tmp_path / "d1.npz"
    x = np.zeros((4, 5), np.float32)
    x[2, 3] = np.inf
    np.savez(path, x=x, y=np.array([0, 1, 1, 0]))
    assert refusal(files.npz(), path) == f"{path}: row 3, feature index 3: inf{HINT}"
    examples = read_examples(files.npz(), path, DROP)
    assert examples.dropped == 1 and examples.y.tolist() == [0, 1, 0]
    np.savez(path, x=np.zeros((3, 2)), y=np.array([0, 5, 1]))
    assert refusal(files.npz(), path) == (
        f"{path}: row 2, label: 5 is not a class (classes: ok, failure; or their indices 0..1)"
    )


def test_npy_folder(tmp_path):
    folder = tmp_path / "d1"
    folder.mkdir()
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", np.array([1, 0, 1], np.uint8))
    examples = read_examples(files.npy(), folder, CLASSES)
    np.testing.assert_array_equal(examples.x, x)
    assert type(examples.x) is np.ndarray and examples.x.flags.writeable
    assert examples.y.tolist() == [1, 0, 1]
    (folder / "y.npy").rename(folder / "labels.npy")
    assert (
        refusal(files.npy(), folder) == f"{folder}: no file 'y.npy' (.npy files: labels.npy, x.npy)"
    )
    assert refusal(files.npy(), folder / "x.npy") == f"{folder}/x.npy: not a folder"
    assert refusal(files.npy(), tmp_path / "nope") == f"{tmp_path}/nope: no such file"


# --- image folders -------------------------------------------------------------------------


def image_tree(tmp_path, images: dict[str, dict[str, np.ndarray]], suffix=".png"):
    root = tmp_path / "d1"
    for class_name, members in images.items():
        (root / class_name).mkdir(parents=True)
        for file_name, pixels in members.items():
            Image.fromarray(pixels).save(root / class_name / f"{file_name}{suffix}")
    return root


def test_image_folder_grey_values_order_and_labels(tmp_path):
    first = np.array([[0, 51], [102, 255]], np.uint8)
    second = np.full((2, 2), 17, np.uint8)
    root = image_tree(tmp_path, {"failure": {"b": second, "a": first}, "ok": {"z": first.T}})
    (root / "failure" / "notes.txt").write_text("ignored")
    loader = files.image_folder(size=(2, 2))
    assert loader.input_shape == (2, 2, 1)
    examples = read_examples(loader, root, Schema((2, 2, 1), class_names=("ok", "failure")))
    assert examples.x.shape == (3, 2, 2, 1) and examples.x.dtype == np.float32
    expected = np.stack([first.T, first, second])[..., None].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(examples.x, expected)
    assert examples.y.tolist() == [0, 1, 1]


def test_image_folder_rgb_resizes_and_reads_jpeg(tmp_path):
    colour = np.zeros((10, 6, 3), np.uint8)
    colour[...] = (200, 100, 50)
    root = image_tree(tmp_path, {"ok": {"a": colour}, "failure": {}}, suffix=".jpg")
    loader = files.image_folder(size=(4, 3), mode="RGB")
    assert loader.input_shape == (4, 3, 3)
    examples = read_examples(loader, root, CLASSES)
    assert examples.x.shape == (1, 4, 3, 3) and examples.y.tolist() == [0]
    np.testing.assert_allclose(
        examples.x[0], np.broadcast_to([200, 100, 50], (4, 3, 3)) / 255, atol=3 / 255
    )


def test_image_folder_refusals(tmp_path):
    pixels = np.zeros((2, 2), np.uint8)
    root = image_tree(tmp_path, {"ok": {"a": pixels}, "brokn": {"b": pixels}})
    loader = files.image_folder(size=(2, 2))
    assert refusal(loader, root) == f"{root}: folder 'brokn' is not a class (classes: ok, failure)"
    (root / "brokn" / "b.png").unlink()
    (root / "brokn").rmdir()
    (root / "ok" / "c.png").write_bytes(b"not a png")
    assert refusal(loader, root).startswith(f"{root}/ok/c.png: not an image: ")
    (root / "ok" / "c.png").unlink()
    Image.fromarray(pixels).save(root / "loose.png")
    assert (
        refusal(loader, root)
        == f"{root}: image 'loose.png' is not in a class folder (one folder per class: ok, failure)"
    )
    (root / "loose.png").unlink()
    (root / "ok" / "a.png").unlink()
    assert refusal(loader, root) == f"{root}: no images (one folder per class: ok, failure)"
    assert refusal(loader, tmp_path / "nope") == f"{tmp_path}/nope: no such file"
    assert refusal(loader, write(tmp_path / "f.png", "")) == f"{tmp_path}/f.png: not a folder"
    assert refusal(loader, root, Schema((28, 28, 1), class_names=("ok", "failure"))) == (
        f"{root}: examples have shape (2, 2, 1), the task's input is (28, 28, 1)"
    )


# --- the task's own function ---------------------------------------------------------------


def test_task_function_arrays_get_the_generic_checks(tmp_path):
    path = write(tmp_path / "d1.bin", "")
    x = np.arange(8, dtype=np.float64).reshape(2, 2, 2)
    examples = read_examples(lambda p: (x, np.array(["ok", "failure"])), path, CLASSES)
    np.testing.assert_array_equal(examples.x, x.astype(np.float32))
    assert examples.y.tolist() == [0, 1]
    bad = x.copy()
    bad[1, 0, 1] = np.nan
    assert refusal(lambda p: (bad, np.array([0, 1])), path) == (
        f"{path}: row 2, feature index (0, 1): NaN{HINT}"
    )
    flat = np.zeros((3, 4))
    flat[1, 2] = -np.inf
    assert (
        refusal(lambda p: (flat, np.zeros(3, int)), path)
        == f"{path}: row 2, feature index 2: -inf{HINT}"
    )
    targets = np.zeros((3, 2))
    targets[0, 1] = np.nan
    assert refusal(lambda p: (flat, targets), path, Schema(None, target_names=("a", "b"))) == (
        f"{path}: row 1, target index 1: NaN{HINT}"
    )


def test_task_function_gets_the_path_and_its_failures_are_wrapped(tmp_path):
    path = write(tmp_path / "d1.bin", "")
    seen = []

    def loader(p):
        seen.append(p)
        raise KeyError("sensor_7")

    assert refusal(loader, str(path)) == f"{path}: the task's loader failed: KeyError: 'sensor_7'"
    assert seen == [path]

    def interrupted(p):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        read_examples(interrupted, path, CLASSES)
    assert (
        refusal(lambda p: None, path)
        == f"{path}: the task's loader returned None, not a pair of arrays (x, y)"
    )
    assert refusal(lambda p: (1, 2, 3), path) == (
        f"{path}: the task's loader returned a tuple of 3 items, not a pair of arrays (x, y)"
    )
    assert refusal(lambda p: (np.zeros((2, 1)), "ok"), path) == (
        f"{path}: the task's loader returned y as a str, not an array"
    )
    assert (
        refusal(lambda p: (np.zeros((2, 1)), np.zeros(2)), tmp_path / "nope")
        == f"{tmp_path}/nope: no such file"
    )


def test_os_errors_give_the_reason_and_foreign_messages_stay_one_line(tmp_path, monkeypatch):
    path = tmp_path / "d1.npz"
    np.savez(path, x=np.zeros((2, 1)), y=np.zeros(2, int))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "load", denied)
    assert refusal(files.npz(), path) == f"{path}: cannot read: Permission denied"
    monkeypatch.undo()

    def multi_line(p):
        raise RuntimeError("sensor table broken\n  at line 3")

    assert refusal(multi_line, path) == (
        f"{path}: the task's loader failed: RuntimeError: sensor table broken at line 3"
    )


def test_reading_files_does_not_import_jax():
    code = "import sys, hierfl.data.files; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: files.csv(), "exactly one of label= and targets="),
        (lambda: files.csv(label="y", targets=["z"]), "exactly one of label= and targets="),
        (lambda: files.parquet(targets="wear"), "for one write ['wear']"),
        (lambda: files.csv(["a", "y"], label="y"), "column 'y' is named twice"),
        (lambda: files.csv(label="y", delimiter=";;"), "delimiter is one character"),
        (lambda: files.csv(label="y", column_types={"a": float}), "is a pyarrow type"),
        (lambda: files.image_folder(size=(28,)), "size is (height, width)"),
        (lambda: files.image_folder(size=(28, 28), mode="CMYK"), 'mode is "L" (grey) or "RGB"'),
        (lambda: Schema(None), "not neither"),
        (lambda: Schema(None, ("a",), ("b",)), "not both"),
        (lambda: Schema(None, ("a",), on_bad_rows="skip"), 'on_bad_rows is "refuse" or "drop"'),
    ],
)
def test_programming_mistakes_are_value_errors_at_construction(make, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        make()
