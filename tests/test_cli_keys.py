"""`hierfl keys generate DIR NAME...` writes key files into DIR and nowhere else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hierfl.cli.commands import build_parser

HIERFL = Path(sys.executable).parent / "hierfl"


def test_key_names_must_be_plain_names(tmp_path, capsys):
    keys = tmp_path / "a" / "b" / "keys"
    refused = subprocess.run(
        [str(HIERFL), "keys", "generate", str(keys), "cloud", "../../x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stdout
    assert "'../../x' is not a plain name" in refused.stderr
    assert list(tmp_path.rglob("*")) == []  # refused before any key was written, even cloud's
    parser = build_parser()
    for name in ("/tmp/x", ".hidden", "a/b", "", "..", "x\n"):
        with pytest.raises(SystemExit):
            parser.parse_args(["keys", "generate", str(keys), name])
        assert f"{name!r} is not a plain name" in capsys.readouterr().err
    made = subprocess.run(
        [str(HIERFL), "keys", "generate", str(keys), "cloud", "plant-a.line_1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in keys.iterdir()) == [
        "cloud.key",
        "cloud.key_secret",
        "plant-a.line_1.key",
        "plant-a.line_1.key_secret",
    ]
