"""What `hierfl predict` reads from a file, and how it refuses a bad one (`hierfl.cli.inputs`).

Real files in a temporary folder; every refusal must name the file and the place in it.
"""

from __future__ import annotations

import numpy as np
import pytest

from hierfl.cli.inputs import read_examples
from hierfl.errors import HierflError

SHAPE = (2, 3)  # six numbers per example


def test_csv_rows_become_examples_with_or_without_a_header(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("1,2,3,4,5,6\n\n7,8,9,10,11,12e0\n")  # a blank line is skipped
    x = read_examples(plain, SHAPE, "float32")
    assert x.dtype == np.float32 and x.shape == (2, 2, 3)
    np.testing.assert_array_equal(x.reshape(2, 6), [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    named = tmp_path / "named.csv"
    named.write_bytes("\ufeffa,b,c,d,e,f\r\n-1, 2 ,3,4,5,6\r\n".encode())  # BOM, CRLF, spaces
    np.testing.assert_array_equal(
        read_examples(named, SHAPE, "float32").reshape(6), [-1, 2, 3, 4, 5, 6]
    )
    tabs = tmp_path / "tabs.tsv"
    tabs.write_text("1\t2\t3\t4\t5\t6\n")
    assert read_examples(tabs, SHAPE, "float32").shape == (1, 2, 3)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "a,b,c,d,e,f\n1,2,3,4,5,6\n1,2,x,4,5,6\n",
            "bad.csv, row 3, column 3 ('c'): 'x' is not a number",
        ),
        ("1,2,3,4,5,6\n1,2,3,4,,6\n", "bad.csv, row 2, column 5: '' is not a number"),
        ("1,2,3,4,5,6\n1,2,3\n", "bad.csv, row 2: 3 columns, but row 1 has 6"),
        (
            "1,2,3,4,5\n",
            "bad.csv: rows of 5 numbers; the model takes 6 per example (input shape [2, 3]",
        ),
        ("h\n", "bad.csv: no rows of numbers"),
        (
            "1,2,3,4,5,6\n1,2,3,nan,5,6\n",
            "bad.csv, row 2, column 4: nan is not a finite float32 number",
        ),
        (
            "1,2,3,4,5,1e39\n1,2,inf,4,5,6\n",
            "row 1, column 6: 1e+39 is not a finite float32 number (1 more such cells)",
        ),
    ],
)
def test_a_bad_csv_cell_is_named_by_row_and_column(tmp_path, text, expected):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(HierflError) as refused:
        read_examples(bad, SHAPE, "float32")
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


def test_arrays_of_examples_one_example_or_rows(tmp_path):
    for shape in ((4, 2, 3), (2, 3), (4, 6), (6,)):
        path = tmp_path / "x.npy"
        np.save(path, np.ones(shape, np.float64))
        x = read_examples(path, SHAPE, "float32")
        assert x.dtype == np.float32 and x.shape[1:] == SHAPE and x.size == np.prod(shape)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.zeros((3, 5)), "x.npy: examples of shape [3, 5]; the model takes [n, 2, 3]"),
        (np.zeros((0, 2, 3)), "x.npy: holds no examples"),
        (np.array(["a", "b"]), "x.npy: holds <U1 values; the model takes numbers"),
        (
            np.zeros((3, 2, 3)) + [[[0]], [[np.inf]], [[0]]],
            "x.npy: example 1 (counted from 0) holds NaN",
        ),
        (
            np.full((12, 6), 1e39),
            "examples 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more (counted from 0)",
        ),
    ],
)
def test_a_bad_array_is_refused_naming_the_examples(tmp_path, array, expected):
    path = tmp_path / "x.npy"
    np.save(path, array)
    with pytest.raises(HierflError) as refused:
        read_examples(path, SHAPE, "float32")
    assert expected in str(refused.value)


def test_files_that_are_neither_arrays_nor_csv_text(tmp_path):
    archive = tmp_path / "x.npz"
    np.savez(archive, a=np.zeros(6))
    with pytest.raises(HierflError, match="an .npz archive holds several arrays"):
        read_examples(archive, SHAPE, "float32")
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(HierflError, match="neither a .npy array nor CSV text"):
        read_examples(binary, SHAPE, "float32")
    with pytest.raises(HierflError, match="missing.csv: cannot read examples"):
        read_examples(tmp_path / "missing.csv", SHAPE, "float32")


def test_a_model_of_named_columns_takes_them_from_the_header_in_its_order(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("when,b,label,a\n2026-01-01,2.5,ok,1\n2026-01-02,-1,failure,0.5\n")
    x = read_examples(path, (2,), "float32", features=("a", "b"))
    np.testing.assert_array_equal(x, np.array([[1.0, 2.5], [0.5, -1.0]], np.float32))
    with pytest.raises(HierflError) as missing:
        read_examples(path, (3,), "float32", features=("a", "b", "c"))
    assert str(missing.value) == (
        f"{path}: no column 'c'; the model reads a, b, c (the header has: when, b, label, a)"
    )
    path.write_text("b,label,a\n2.5,ok,x\n")
    with pytest.raises(HierflError, match=r"row 2, column 3 \('a'\): 'x' is not a number"):
        read_examples(path, (2,), "float32", features=("a", "b"))
