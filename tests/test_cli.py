"""The `hierfl` command as a user runs it: real OS processes, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HIERFL = Path(sys.executable).parent / "hierfl"


def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run(
        [str(HIERFL), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def test_console_script_is_installed_and_documents_every_command():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("simulate", "topology", "report"):
        assert command in result.stdout


def test_simulate_demo_end_to_end_reaches_90_percent(tmp_path):
    """The Quickstart's main job: `hierfl simulate demo` on digits within 20 cloud rounds."""
    out = tmp_path / "demo-run"
    result = run("simulate", "demo", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "simulation summary" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 20
    assert max(r["accuracy"] for r in records) >= 0.90
    assert records[-1]["accuracy"] >= 0.90
    assert (out / "model.npz").stat().st_size > 0

    report = run("report", str(out))
    assert report.returncode == 0, report.stderr
    for name in ("accuracy.png", "bytes.png", "loss.png", "report.md"):
        assert (out / name).stat().st_size > 0


def test_topology_show_prints_the_tree_with_data_and_addresses():
    result = run("topology", "show", "demo")
    assert result.returncode == 0, result.stderr
    for text in (
        "plant-a",
        "plant-b",
        "line-3",
        "tcp://127.0.0.1:5550",
        "tcp://127.0.0.1:5561",
        "examples/device",
    ):
        assert text in result.stdout
    listed = run("topology", "show", "demo", "--devices")
    assert "plant-a/line-1/dev-003" in listed.stdout


def test_invalid_topology_exits_2_naming_each_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[federation]
name = "x"
task = "digits"
cloud_rounds = 0
learning_rate = 0.1

[cloud]
address = "tcp://127.0.0.1:5550"

[[plants]]
name = "a"
address = "tcp://127.0.0.1:5550"

[[plants.lines]]
name = "l"
devices = 0
"""
    )
    for command in (("topology", "validate"), ("simulate",)):
        result = run(*command, str(bad))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "federation.cloud_rounds" in result.stderr
        assert "plants[0].lines[0].devices" in result.stderr
        assert "plants[0].address" in result.stderr


def test_unknown_task_and_model_are_rejected_at_load_time(tmp_path):
    text = (Path(__file__).parent / "data" / "tiny.toml").read_text()
    for old, new, field in (
        ('task = "digits"', 'task = "digitz"', "federation.task"),
        ('model = "mlp"', 'model = "resnet"', "federation.model"),
    ):
        path = tmp_path / f"{field}.toml"
        path.write_text(text.replace(old, new))
        result = run("topology", "validate", str(path))
        assert result.returncode == 2
        assert field in result.stderr


def test_markup_in_names_is_printed_as_written_not_interpreted(tmp_path):
    """A name like `[/bold]` is the user's text: rich markup in it must not replace the real error."""
    text = (Path(__file__).parent / "data" / "tiny.toml").read_text()
    text = text.replace('name = "tiny"', 'name = "[/bold]"')
    too_many = tmp_path / "too-many.toml"  # valid, but its line asks for more digits than exist
    too_many.write_text(text + "[plants.lines.data]\nsamples_per_device = 2000\n")
    bad_plant = tmp_path / "bad-plant.toml"
    bad_plant.write_text(text.replace('name = "plant-a"', 'name = "[/bold]"'))
    valid = tmp_path / "[red]valid.toml"
    valid.write_text(text)

    simulated = run("simulate", str(too_many), "--out", str(tmp_path / "run"), "--quiet")
    assert simulated.returncode == 2, simulated.stderr
    assert "MarkupError" not in simulated.stderr and "Traceback" not in simulated.stderr
    assert "[/bold]: task digits" in simulated.stdout
    assert "plants ask for 6000 training examples" in simulated.stderr  # the real error

    refused = run("topology", "validate", str(bad_plant))
    assert refused.returncode == 2, refused.stderr
    assert "plants[0].name: invalid name '[/bold]'" in refused.stderr
    assert "Traceback" not in refused.stderr

    shown = run("topology", "show", str(valid))
    assert shown.returncode == 0, shown.stderr
    assert "[/bold]  task=digits" in shown.stdout
    validated = run("topology", "validate", str(valid))
    assert validated.returncode == 0, validated.stderr
    assert f"ok: {valid}: 1 plants, 3 devices" in validated.stdout


def test_missing_file_and_missing_run_dir_are_clear_errors(tmp_path):
    missing = run("simulate", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml" in missing.stderr and "demo" in missing.stderr
    no_run = run("report", str(tmp_path / "no-run"))
    assert no_run.returncode == 2 and "no-run" in no_run.stderr


@pytest.mark.parametrize(
    "args", [("simulate", "demo", "--rounds", "0"), ("simulate", "demo", "--seed", "-1")]
)
def test_bad_arguments_are_refused(args):
    result = run(*args)
    assert result.returncode == 2 and "must be" in result.stderr


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run(
        [sys.executable, "-m", "hierfl", "topology", "presets"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "large" in result.stdout and "1040" in result.stdout


def test_sharding_devices_over_cores_gives_the_same_model(tmp_path):
    """The CLI splits each chunk of devices over host cores; the model must not depend on it."""
    topology = Path(__file__).parent / "data" / "tiny.toml"
    models = {}
    for cores in (1, 2):
        out = tmp_path / f"cores-{cores}"
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={cores}"}
        result = subprocess.run(
            [str(HIERFL), "simulate", str(topology), "--rounds", "2", "--out", str(out), "--quiet"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        with np.load(out / "model.npz") as data:
            models[cores] = {k: data[k] for k in data.files if k != "__dtypes__"}
    assert models[1].keys() == models[2].keys()
    for name in models[1]:
        np.testing.assert_allclose(models[2][name], models[1][name], rtol=1e-5, atol=1e-6)


def test_importing_hierfl_leaves_jax_unstarted_so_every_core_can_be_requested():
    # Programs import hierfl modules and only then ask XLA for one host device per core; a
    # module that makes an array at import time starts JAX's backend and pins it to one.
    code = (
        "import hierfl, hierfl.sim.engine, hierfl.studies.comparison, hierfl.studies.baselines, hierfl.cli.commands\n"
        "from hierfl.sim.parallel import request_cpu_devices\n"
        "request_cpu_devices(2)\n"
        "import jax\n"
        "print(len(jax.devices()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "2"
