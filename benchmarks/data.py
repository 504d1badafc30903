"""A device's data files: our CSV and Parquet loaders against pyarrow reading the same file alone.

    python benchmarks/data.py            # 2,000,000 rows x 16 float features + a label
    python benchmarks/data.py --quick    # 200,000 rows
    python benchmarks/data.py --rows 500000 --json out.json

Part 1, loaders. One CSV and one Parquet file of `--rows` rows: 16 float features (4 decimals,
as sensors write them) and a label column of class names. For each file, in the same run:

- ours: `read_examples(csv(label="label"), ...)` / `parquet(...)`, which streams the file batch
  by batch into float32 and checks every cell (finite, label a class);
- baseline, pyarrow alone: `pyarrow.csv.read_csv` with the features typed float32 (its fastest
  setting, multi-threaded) / `pyarrow.parquet.read_table`, then the same float32 x `[N, 16]`
  and int32 y, with no checks.

Each read runs in a fresh child process (the two take turns, best of `--repeat`). The child
first reads the file's first 100 rows with the same reader (loading pyarrow's code, starting
its threads), then resets its peak RSS (Linux `clear_refs`) and times the read. Peak MB is the
rise of its peak RSS (VmHWM) over its RSS just before the read: what the OS gave the read,
pyarrow's allocations included (tracemalloc does not see them), and memory pyarrow's allocator
kept after freeing it. `x final` is that rise over the bytes of the final x and y.

Part 2, a device host's start-up data and memory on the `large` preset: the whole plan, as
every device process built it before, against its own plant's part only, as it does now
(the same rows either way).
The last stdout line is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

FEATURES = [f"f{i:02d}" for i in range(16)]
CLASSES = ("ok", "failure")
ROOT = Path(__file__).resolve().parent.parent


# --- Part 1: loaders -----------------------------------------------------------------------


def write_files(folder: Path, rows: int, seed: int = 0) -> dict[str, Path]:
    """A CSV and a Parquet file with the same table; returns their paths by format."""
    rng = np.random.default_rng(seed)
    columns = {name: np.round(rng.normal(0, 10, rows), 4) for name in FEATURES}
    columns["label"] = np.where(rng.random(rows) < 0.1, "failure", "ok")
    table = pa.table(columns)
    paths = {"csv": folder / "device.csv", "parquet": folder / "device.parquet"}
    pa_csv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    pa_csv.write_csv(table.slice(0, 100), warm_up_path(paths["csv"]))
    pq.write_table(table.slice(0, 100), warm_up_path(paths["parquet"]))
    return paths


def warm_up_path(path: Path) -> Path:
    """The first 100 rows of `path`: a child reads them first, loading pyarrow's code and
    starting its threads, so neither is counted as the read's time or memory."""
    return path.with_name("warm-up-" + path.name)


def ours(fmt: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    from hierfl.data.files import Schema, csv, parquet, read_examples

    loader = csv(label="label") if fmt == "csv" else parquet(label="label")
    examples = read_examples(loader, path, Schema((len(FEATURES),), class_names=CLASSES))
    return examples.x, examples.y


def baseline(fmt: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if fmt == "csv":
        types = {name: pa.float32() for name in FEATURES}
        table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=types))
    else:
        table = pq.read_table(path)
    x = np.empty((table.num_rows, len(FEATURES)), np.float32)
    for j, name in enumerate(FEATURES):
        x[:, j] = table.column(name).to_numpy()
    labels = table.column("label").combine_chunks().dictionary_encode()
    lookup = np.array([CLASSES.index(v) for v in labels.dictionary.to_pylist()], np.int32)
    return x, lookup[labels.indices.to_numpy()]


def memory_status(field: str) -> int | None:
    """A field of /proc/self/status in bytes (Linux: VmRSS now, VmHWM the peak), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> None:
    """Starts VmHWM afresh from the current RSS (Linux >= 4.0), so import peaks do not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def file_bytes(fmt: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The limit: the file's bytes read into memory, nothing parsed (the page cache's speed)."""
    data = np.frombuffer(path.read_bytes(), np.uint8)
    return data, data[:0]


READERS = {
    "ours": lambda fmt, path: ours(fmt, path),
    "baseline": lambda fmt, path: baseline(fmt, path),
    "limit": file_bytes,
}
"""How a child reads a file: our loader, pyarrow alone, or the limit (bytes, unparsed)."""


def child(reader: str, fmt: str, path: Path) -> None:
    """Runs one read in this (fresh) process and prints its seconds, peak rise and bytes."""
    read = READERS[reader]
    read(fmt, warm_up_path(path))
    reset_peak()
    held = memory_status("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    x, y = read(fmt, path)
    seconds = time.perf_counter() - started
    peak = memory_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "rise": peak - held, "bytes": x.nbytes + y.nbytes}))


def run_child(reader: str, fmt: str, path: Path) -> dict:
    return run_command(["--child", reader, fmt, str(path)])


def run_command(arguments: list[str]) -> dict:
    """Runs this program with `arguments` in a fresh process; its last line, as JSON."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, __file__, *arguments]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def loaders(paths: dict[str, Path], rows: int, repeat: int) -> dict:
    """Part 1: best time and peak memory of ours and the baseline on each file."""
    result = {}
    for fmt, path in paths.items():
        runs = {"ours": [], "baseline": [], "limit": []}
        for _ in range(repeat):  # take turns, so load from other processes hits both alike
            for reader in runs:
                runs[reader].append(run_child(reader, fmt, path))
        row = {"file_mb": path.stat().st_size / 1e6}
        for reader, measured in runs.items():
            best = min(m["seconds"] for m in measured)
            rise = max(m["rise"] for m in measured)
            row[reader] = {
                "seconds": best,
                "rows_per_s": rows / best,
                "peak_rise_mb": rise / 1e6,
                "peak_over_final": rise / measured[0]["bytes"],
            }
        row["speed_vs_baseline"] = row["ours"]["rows_per_s"] / row["baseline"]["rows_per_s"]
        row["speed_vs_limit"] = row["ours"]["rows_per_s"] / row["limit"]["rows_per_s"]
        result[fmt] = row
    return result


def print_loaders(result: dict, rows: int) -> None:
    final_mb = rows * (len(FEATURES) + 1) * 4 / 1e6
    print(f"\n{rows:,} rows x {len(FEATURES)} features + a label; final x and y {final_mb:.0f} MB")
    print(
        f"{'file':<14} {'reader':<47} {'rows/s':>11} {'x base':>7} {'x limit':>8} "
        f"{'peak MB':>8} {'x final':>8}"
    )
    for fmt, row in result.items():
        plain = "pyarrow.csv.read_csv" if fmt == "csv" else "pyarrow.parquet.read_table"
        file = f"{fmt} {row['file_mb']:.0f} MB"
        for reader, label in (
            ("limit", "the file's bytes read alone (the limit)"),
            ("baseline", f"{plain}, to float32"),
            ("ours", f"hierfl {fmt}(): streamed, every cell checked"),
        ):
            m = row[reader]
            ratio = m["rows_per_s"] / row["baseline"]["rows_per_s"]
            of_limit = m["rows_per_s"] / row["limit"]["rows_per_s"]
            print(
                f"{file:<14} {label:<47} {m['rows_per_s']:>11,.0f} {ratio:>7.2f} {of_limit:>8.3f} "
                f"{m['peak_rise_mb']:>8.0f} {m['peak_over_final']:>8.2f}"
            )


# --- Part 2: a device host's start-up data and memory, before and after ---------------------
# A device host of the `large` preset (bearing-fault, 10 plants x 104 devices) gets its
# devices' examples. Before this change every device process built the whole federation's
# plan (all 10 plants' vibration windows) and kept its own rows; now it makes only its own
# plant's (`PlantShards`, `plan.one_plant`), exactly the plan's part. Each in a fresh
# child process, the two taking turns, best time of `--repeat`, peak RSS rise as in Part 1.

STARTUP = {
    "before": "the whole plan (make_plan), as each device process built it before",
    "after": "its own plant only (plan.one_plant), as a device host does now",
}


def startup_child(how: str) -> None:
    """Makes a device host's data for plant-00 of `large` the `how` way; prints seconds and peak rise."""
    from hierfl.data.loading import load_topology
    from hierfl.runtime.device_data import PlanShards, PlantShards

    topology = load_topology("large")
    reset_peak()
    held = memory_status("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    source = PlanShards(topology) if how == "before" else PlantShards(topology, 0)
    rows = sum(source.examples(d)[2] for d in topology.plants[0].devices)
    seconds = time.perf_counter() - started
    peak = memory_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "rise": peak - held, "rows": int(rows)}))


def startup(repeat: int) -> dict:
    """Part 2: best seconds and peak rise of a device host's data, before and after."""
    runs = {how: [] for how in STARTUP}
    for _ in range(repeat):
        for how in runs:
            runs[how].append(run_command(["--startup-child", how]))
    result = {}
    for how, measured in runs.items():
        assert len({m["rows"] for m in measured}) == 1
        result[how] = {
            "seconds": min(m["seconds"] for m in measured),
            "peak_rise_mb": max(m["rise"] for m in measured) / 1e6,
            "rows": measured[0]["rows"],
        }
    assert result["before"]["rows"] == result["after"]["rows"]  # the same examples, made two ways
    result["speedup"] = result["before"]["seconds"] / result["after"]["seconds"]
    result["memory_ratio"] = result["before"]["peak_rise_mb"] / result["after"]["peak_rise_mb"]
    return result


def print_startup(result: dict) -> None:
    print(
        "\nA device host of plant-00 of `large` (104 devices of 10 plants x 104) gets its examples:"
    )
    print(f"{'how':<72} {'seconds':>8} {'peak MB':>8}")
    for how, label in STARTUP.items():
        m = result[how]
        print(f"{label:<72} {m['seconds']:>8.2f} {m['peak_rise_mb']:>8.0f}")
    print(
        f"now {result['speedup']:.1f}x faster with {result['memory_ratio']:.1f}x less peak memory "
        f"({result['after']['rows']:,} training rows either way)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=2_000_000, help="rows per file (default 2,000,000)"
    )
    parser.add_argument("--quick", action="store_true", help="200,000 rows (overrides --rows)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="reads of each kind; the best counts (default 3)"
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--child", nargs=3, metavar=("READER", "FORMAT", "PATH"), help=argparse.SUPPRESS
    )
    parser.add_argument("--startup-child", choices=tuple(STARTUP), help=argparse.SUPPRESS)
    parser.add_argument("--skip-startup", action="store_true", help="Part 1 only")
    args = parser.parse_args()
    if args.startup_child:
        startup_child(args.startup_child)
        return
    if args.child:
        reader, fmt, path = args.child
        child(reader, fmt, Path(path))
        return
    rows = 200_000 if args.quick else args.rows

    result = {
        "machine": (
            f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, python {platform.python_version()}, "
            f"pyarrow {pa.__version__}, numpy {np.__version__}"
        ),
        "rows": rows,
    }
    print(result["machine"])
    with tempfile.TemporaryDirectory(prefix="hierfl-data-bench-") as folder:
        paths = write_files(Path(folder), rows)
        result["loaders"] = loaders(paths, rows, args.repeat)
        print_loaders(result["loaders"], rows)
        sys.stdout.flush()
    if not args.skip_startup:
        result["startup"] = startup(args.repeat)
        print_startup(result["startup"])

    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
