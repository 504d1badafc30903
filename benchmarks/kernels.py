"""Kernel bandwidth: hierfl.kernels on `[K, P]` stacks against numpy `w @ X` and a memory copy.

    python benchmarks/kernels.py            # K in {8, 64, 512} x P in {1e5, 1e6, 1e7}, about 4 minutes on 2 CPU cores
    python benchmarks/kernels.py --quick    # K in {8, 64} x P in {1e5, 1e6}, top-k at P = 1e6 only, about 1 minute
    python benchmarks/kernels.py --json out.json

For every (K, P) whose float32 stack fits under `--max-gb` (default 3 GB; larger ones are
listed as skipped), one stack of K updates and one weight vector are timed with, taking
turns round by round so that load from other processes hits all alike:

- baselines, in the same run: numpy `w @ X` (BLAS gemv), a numpy memory copy of the
  stack into an existing buffer (`np.copyto`: the memcopy bandwidth) and into a fresh
  one (`X.copy()`, which also pays first-touch page faults, as every kernel that returns
  a new stack does), and XLA's own `jnp.dot(w, X)` and elementwise pass `-X`;
- kernels, each jitted once per shape: weighted_mean, segment_weighted_mean (K updates
  into 4 segments), coordinate_median and trimmed_mean (beta 0.1), unweighted and
  weighted (these sort over K: only where K * P <= `--sort-limit`), and the int8,
  float16 and bfloat16 codecs' encode + decode, vmapped over the K updates.

Every time is the minimum over all timed calls (after a compiling warm-up call), with
`block_until_ready`. GB/s is always the bytes of the float32 stack read (4 K P) divided
by that time, whatever the kernel writes, so ratios between rows are ratios of times.
A second table times top-k selection (k = 1% of P) on one update of P values against a
memory pass over the same vector and numpy's sort-free `np.argpartition`. On a GPU the
tables add the fraction of the device's memory bandwidth reached.

The last line of stdout is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import resource
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from machine import cpu_model
from rich.console import Console
from rich.table import Table

from hierfl.kernels import (
    coordinate_median,
    make_codec,
    roundtrip,
    segment_weighted_mean,
    trimmed_mean,
    weighted_mean,
)
from hierfl.kernels.selection import top_k_magnitude

FULL_K = (8, 64, 512)
FULL_P = (100_000, 1_000_000, 10_000_000)
QUICK_K = (8, 64)
QUICK_P = (100_000, 1_000_000)
SEGMENTS = 4
BETA = 0.1
TOPK_FRACTION = 0.01
TOPK_TARGET_P = 1_000_000

TARGET_WEIGHTED_MEAN = 0.9
"""weighted_mean GB/s >= 0.9 x numpy `w @ X` on the same stack."""
TARGET_INT8 = 0.5
"""int8 quantize + dequantize GB/s >= 0.5 x the memcopy bandwidth."""
TARGET_TOPK = 3.0
"""top-k encode at P = 1e6 takes at most 3 x a full sort-free pass over the vector."""

PEAK_GBPS = (("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100", 3350.0), ("A100", 2000.0))
"""Published memory bandwidth by device name (first match); others assume DEFAULT_PEAK_GBPS."""
DEFAULT_PEAK_GBPS = 3000.0

BASELINES = (
    "numpy w @ X",
    "numpy memcpy",
    "numpy X.copy()",
    "jax dot(w, X)",
    "jax pass -X",
    "numpy int8 round trip",
)
MEMORY_BASELINE = {"cpu": "numpy memcpy", "gpu": "jax pass -X"}
"""The memory-bandwidth reference of the targets: host memcpy on a CPU, the device's own pass on a GPU."""
MATMUL_BASELINE = {"cpu": "numpy w @ X", "gpu": "jax dot(w, X)"}

# --- environment --------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": device.device_kind,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_caches": _cpu_caches(),
        "python": platform.python_version(),
        "blas": numpy_blas(),
        "env": {
            name: os.environ.get(name, "")
            for name in (
                "OPENBLAS_CORETYPE",
                "OPENBLAS_L2_SIZE",
                "OPENBLAS_NUM_THREADS",
                "OMP_NUM_THREADS",
                "XLA_FLAGS",
            )
        },
        "load_before": os.getloadavg()[0],
    }


def numpy_blas() -> str:
    """Which BLAS numpy calls, with its version, core type and threads (threadpoolctl, else numpy's build config)."""
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                return (
                    f"{pool.get('internal_api')} {pool.get('version')}, core {pool.get('architecture')}, "
                    f"{pool.get('num_threads')} threads ({os.path.basename(pool.get('filepath', ''))})"
                )
    except ImportError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')} (build config; threads unknown)"
    except Exception:  # the header must not stop the benchmark
        return "unknown"


def _cpu_caches() -> str:
    """`L1d 48K, L2 2048K, L3 491520K` as the kernel reports them (stacks that fit in cache read faster)."""
    caches = []
    try:
        for index in sorted(pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
            kind, level, size = (
                (index / name).read_text(encoding="utf-8").strip()
                for name in ("type", "level", "size")
            )
            if kind != "Instruction":
                caches.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    except OSError:
        return "unknown"
    return ", ".join(caches) or "unknown"


def peak_gbps(device_kind: str, override: float | None) -> tuple[float, str]:
    """The device's memory bandwidth in GB/s and where the figure comes from."""
    if override:
        return override, "--peak-gbps"
    for name, gbps in PEAK_GBPS:
        if name.lower() in device_kind.lower():
            return gbps, f"published figure for {name}"
    return DEFAULT_PEAK_GBPS, "assumed (device not in the table)"


# --- timing -------------------------------------------------------------------------------


class Case(NamedTuple):
    """One timed function: `run()` computes and blocks until the result is ready."""

    name: str
    kind: str  # "baseline" or "kernel"
    run: Callable[[], Any]


def time_cases(cases: list[Case], rounds: int, call_budget_s: float) -> dict[str, dict[str, float]]:
    """Min-of-N seconds per case: one compiling warm-up call each, then `rounds` rounds taking turns.

    In each round a case is called as often as fits in `call_budget_s` (at least once), so
    fast kernels get many samples and slow ones a few; the minimum is the least disturbed.
    """
    first: dict[str, float] = {}
    for case in cases:
        start = time.perf_counter()
        case.run()
        first[case.name] = time.perf_counter() - start
    best = {case.name: math.inf for case in cases}
    calls = {case.name: 0 for case in cases}
    for r in range(rounds):
        for case in cases if r % 2 == 0 else reversed(cases):
            estimate = min(first[case.name], best[case.name])
            for _ in range(max(1, min(50, int(call_budget_s / max(estimate, 1e-6))))):
                start = time.perf_counter()
                case.run()
                best[case.name] = min(best[case.name], time.perf_counter() - start)
                calls[case.name] += 1
    return {
        case.name: {"s": best[case.name], "warmup_s": first[case.name], "calls": calls[case.name]}
        for case in cases
    }


# --- the stack ----------------------------------------------------------------------------


def make_stack(k: int, p: int, seed: int = 0) -> np.ndarray:
    """K float32 updates of P values: windows at random offsets of one normal vector (cheap to build, no two rows alike)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(p + 8192, dtype=np.float32)
    offsets = rng.choice(8192, size=k, replace=k > 8192)
    stack = np.empty((k, p), np.float32)
    for row, offset in enumerate(offsets):
        stack[row] = base[offset : offset + p]
    return stack


def codec_case(name: str, p: int, stack: jax.Array, keys: jax.Array) -> Callable[[], Any]:
    codec = make_codec(name, p)
    residuals = jnp.zeros((stack.shape[0], codec.residual_size), jnp.float32)
    fn = jax.jit(jax.vmap(lambda x, r, key: roundtrip(codec, x, r, key)[0]))
    return lambda: fn(stack, residuals, keys).block_until_ready()


def numpy_int8_case(stack: np.ndarray, block_size: int = 256) -> Callable[[], Any]:
    """The int8 round trip as plain numpy would do it, into buffers made once: per-block
    `max |x| / 127`, `floor(x / scale + u)` clipped to [-127, 127] as int8, and back.

    The noise u is drawn once beforehand (a fresh draw per call would cost numpy more than
    the quantization), so this baseline is faster than what a user would run each round.
    """
    k, p = stack.shape
    blocks = -(-p // block_size)
    padded = np.zeros((k, blocks * block_size), np.float32)
    noise = np.random.default_rng(3).random(padded.shape, dtype=np.float32)
    q = np.empty(padded.shape, np.int8)
    out = np.empty_like(padded)

    def run() -> np.ndarray:
        padded[:, :p] = stack
        view = padded.reshape(k, blocks, block_size)
        scales = np.abs(view).max(axis=2, keepdims=True) / 127
        inverse = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales > 0)
        np.multiply(view, inverse, out=out.reshape(view.shape))
        np.add(out, noise, out=out)
        np.floor(out, out=out)
        np.clip(out, -127, 127, out=out)
        q[...] = out
        np.multiply(q.reshape(view.shape), scales, out=out.reshape(view.shape))
        return out[:, :p]

    return run


def measure_stack(
    k: int, p: int, sort_limit: float, rounds: int, call_budget_s: float
) -> dict[str, Any]:
    """Every baseline and kernel on one `[K, P]` stack: seconds, GB/s and the case list."""
    xj = jax.device_put(make_stack(k, p))
    x = np.asarray(
        xj
    )  # on a CPU a read-only view of the same buffer: one copy of the stack in memory, not two
    w = np.random.default_rng(1).uniform(1.0, 10.0, size=k).astype(np.float32)
    wj = jax.device_put(w)
    out = np.empty_like(x)
    np.copyto(out, x)  # touch every page of the destination once
    ids = jax.device_put(np.arange(k, dtype=np.int32) % SEGMENTS)
    keys = jax.random.split(jax.random.key(0), k)

    dot = jax.jit(jnp.dot)
    negate = jax.jit(jnp.negative)
    mean = jax.jit(weighted_mean)
    segment_mean = jax.jit(segment_weighted_mean, static_argnums=3)
    cases = [
        Case("numpy w @ X", "baseline", lambda: w @ x),
        Case("numpy memcpy", "baseline", lambda: np.copyto(out, x)),
        Case("numpy X.copy()", "baseline", lambda: x.copy()),
        Case("jax dot(w, X)", "baseline", lambda: dot(wj, xj).block_until_ready()),
        Case("jax pass -X", "baseline", lambda: negate(xj).block_until_ready()),
        Case("weighted_mean", "kernel", lambda: mean(xj, wj).block_until_ready()),
        Case(
            f"segment_weighted_mean ({SEGMENTS} segments)",
            "kernel",
            lambda: segment_mean(xj, wj, ids, SEGMENTS).block_until_ready(),
        ),
    ]
    sorted_kernels = k * p <= sort_limit
    if sorted_kernels:
        median = jax.jit(coordinate_median)
        trimmed = jax.jit(lambda s, w: trimmed_mean(s, BETA, w))
        trimmed_unweighted = jax.jit(lambda s: trimmed_mean(s, BETA))
        cases += [
            Case("coordinate_median", "kernel", lambda: median(xj).block_until_ready()),
            Case(
                "coordinate_median, weighted", "kernel", lambda: median(xj, wj).block_until_ready()
            ),
            Case(
                f"trimmed_mean beta {BETA}",
                "kernel",
                lambda: trimmed_unweighted(xj).block_until_ready(),
            ),
            Case(
                f"trimmed_mean beta {BETA}, weighted",
                "kernel",
                lambda: trimmed(xj, wj).block_until_ready(),
            ),
        ]
    cases += [
        Case("numpy int8 round trip", "baseline", numpy_int8_case(x)),
        Case("int8 quantize + dequantize", "kernel", codec_case("int8", p, xj, keys)),
        Case("float16 round trip", "kernel", codec_case("float16", p, xj, keys)),
        Case("bfloat16 round trip", "kernel", codec_case("bfloat16", p, xj, keys)),
    ]
    times = time_cases(cases, rounds, call_budget_s)
    nbytes = x.nbytes
    rows = [
        {
            "name": case.name,
            "kind": case.kind,
            **times[case.name],
            "gbps": nbytes / times[case.name]["s"] / 1e9,
        }
        for case in cases
    ]
    return {"k": k, "p": p, "stack_bytes": nbytes, "sorted_kernels": sorted_kernels, "rows": rows}


# --- top-k --------------------------------------------------------------------------------


def measure_topk(p: int, rounds: int, call_budget_s: float) -> dict[str, Any]:
    """Top-k (k = 1% of P) of one update `[P]`: lax.top_k, the codec's encode and round trip, against sort-free passes."""
    k = math.ceil(TOPK_FRACTION * p)
    xj = jax.device_put(np.random.default_rng(2).standard_normal(p, dtype=np.float32))
    x = np.asarray(xj)
    out = np.empty_like(x)
    np.copyto(out, x)
    codec = make_codec("topk", p, fraction=TOPK_FRACTION)
    residual = jnp.zeros((codec.residual_size,), jnp.float32)
    key = jax.random.key(0)
    negate = jax.jit(jnp.negative)
    lax_top_k = jax.jit(lambda v: jax.lax.top_k(jnp.abs(v), k))
    encode = jax.jit(codec.encode)
    both = jax.jit(lambda v, r, key: roundtrip(codec, v, r, key))
    cases = [
        Case("numpy memcpy", "baseline", lambda: np.copyto(out, x)),
        Case("jax pass -x", "baseline", lambda: negate(xj).block_until_ready()),
        Case(
            "numpy argpartition(|x|)",
            "baseline",
            lambda: np.argpartition(np.abs(x), p - k)[p - k :],
        ),
        Case(
            "numpy argpartition + argsort (largest first)",
            "baseline",
            lambda: numpy_top_k(x, k),
        ),
        Case("hierfl top_k_magnitude (numpy)", "kernel", lambda: top_k_magnitude(x, k)),
        Case("jax lax.top_k(|x|)", "kernel", lambda: jax.block_until_ready(lax_top_k(xj))),
        Case(
            "topk codec encode", "kernel", lambda: jax.block_until_ready(encode(xj, residual, key))
        ),
        Case(
            "topk codec encode + decode",
            "kernel",
            lambda: jax.block_until_ready(both(xj, residual, key)),
        ),
    ]
    times = time_cases(cases, rounds, call_budget_s)
    rows = [
        {
            "name": case.name,
            "kind": case.kind,
            **times[case.name],
            "gbps": x.nbytes / times[case.name]["s"] / 1e9,
        }
        for case in cases
    ]
    return {"p": p, "k": k, "rows": rows}


def numpy_top_k(x: np.ndarray, k: int) -> np.ndarray:
    """What the codec returns, as plain numpy: the k largest |x|, largest first."""
    magnitude = np.abs(x)
    part = np.argpartition(magnitude, x.shape[0] - k)[x.shape[0] - k :]
    return part[np.argsort(-magnitude[part], kind="stable")]


# --- targets ------------------------------------------------------------------------------


def seconds_of(rows: list[dict[str, Any]], name: str) -> float:
    return next(row["s"] for row in rows if row["name"] == name)


def target_checks(
    stacks: list[dict[str, Any]], topk: list[dict[str, Any]], backend: str
) -> list[dict[str, Any]]:
    """The issue's three targets, each with its measured ratio at every size it applies to."""
    memory = MEMORY_BASELINE.get(backend, "numpy memcpy")
    matmul = MATMUL_BASELINE.get(backend, "numpy w @ X")
    measured = [s for s in stacks if "rows" in s]
    checks = [
        {
            "target": f"weighted_mean >= {TARGET_WEIGHTED_MEAN}x {matmul}",
            "threshold": TARGET_WEIGHTED_MEAN,
            "higher_is_better": True,
            "ratios": {
                _size(s): seconds_of(s["rows"], matmul) / seconds_of(s["rows"], "weighted_mean")
                for s in measured
            },
        },
        {
            "target": f"int8 quantize + dequantize >= {TARGET_INT8}x {memory} bandwidth",
            "threshold": TARGET_INT8,
            "higher_is_better": True,
            "ratios": {
                _size(s): seconds_of(s["rows"], memory)
                / seconds_of(s["rows"], "int8 quantize + dequantize")
                for s in measured
            },
        },
    ]
    pass_name = "jax pass -x" if memory == "jax pass -X" else memory
    for reference in (pass_name, "numpy argpartition(|x|)"):
        points = [t for t in topk if t["p"] == TOPK_TARGET_P]
        checks.append(
            {
                "target": f"top-k encode at P = 1e6 <= {TARGET_TOPK:g}x the time of {reference}"
                + (
                    " (the issue's 'full sort-free pass')"
                    if reference == pass_name
                    else " (a sort-free selection)"
                ),
                "threshold": TARGET_TOPK,
                "higher_is_better": False,
                "ratios": {
                    f"P={_si(t['p'])}, k={_si(t['k'])}": seconds_of(t["rows"], "topk codec encode")
                    / seconds_of(t["rows"], reference)
                    for t in points
                },
            }
        )
    for check in checks:
        ratios = list(check["ratios"].values())
        ok = [
            (r >= check["threshold"]) if check["higher_is_better"] else (r <= check["threshold"])
            for r in ratios
        ]
        check["met"] = sum(ok)
        check["sizes"] = len(ok)
    return checks


def _size(stack: dict[str, Any]) -> str:
    return f"K={stack['k']}, P={_si(stack['p'])}"


def _si(n: int) -> str:
    exponent = round(math.log10(n)) if n > 0 else 0
    return f"1e{exponent}" if n == 10**exponent else f"{n:,}"


# --- output -------------------------------------------------------------------------------


def print_report(console: Console, result: dict[str, Any]) -> None:
    env = result["environment"]
    gpu = env["backend"] == "gpu"
    table = Table(title="environment", show_header=False)
    for key in (
        "jax",
        "numpy",
        "backend",
        "device_kind",
        "cpu_count",
        "cpus_usable",
        "cpu_model",
        "cpu_caches",
        "python",
        "blas",
    ):
        table.add_row(key, str(env[key]) or "-")
    for name, value in env["env"].items():
        table.add_row(name, value or "(not set)")
    table.add_row(
        "load average (1 min)",
        f"{env['load_before']:.2f} before the run, {result['load_after']:.2f} after (this run included)",
    )
    table.add_row("peak RSS", f"{result['peak_rss_mb']:,.0f} MB")
    if gpu:
        table.add_row(
            "device memory bandwidth", f"{result['peak_gbps']:,.0f} GB/s ({result['peak_source']})"
        )
    console.print(table)
    if env["load_before"] > 0.5:
        console.print(
            "[yellow]other processes were using the CPU: absolute figures are noisy; "
            "baselines and kernels take turns, so ratios are fairer[/]"
        )

    matmul = MATMUL_BASELINE.get(env["backend"], "numpy w @ X")
    memory = MEMORY_BASELINE.get(env["backend"], "numpy memcpy")
    table = Table(title="kernels on a [K, P] float32 stack: GB/s = 4 K P bytes / min time")
    columns = ["K, P (stack)", "kernel", "ms", "GB/s", f"x {matmul}", f"x {memory}"] + (
        ["% of peak"] if gpu else []
    )
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("K, P (stack)", "kernel") else "right"
        )
    for stack in result["stacks"]:
        label = f"K={stack['k']}, P={_si(stack['p'])} ({_megabytes(stack['stack_bytes'])})"
        if "skipped" in stack:
            table.add_row(
                label,
                f"[dim]skipped: {stack['skipped']}[/]",
                *[""] * (len(columns) - 2),
                end_section=True,
            )
            continue
        rows = stack["rows"]
        t_matmul, t_memory = seconds_of(rows, matmul), seconds_of(rows, memory)
        for i, row in enumerate(rows):
            name = row["name"] if row["kind"] == "kernel" else f"[cyan]{row['name']}[/] (baseline)"
            cells = [
                label if i == 0 else "",
                name,
                f"{1e3 * row['s']:.3g}",
                f"{row['gbps']:.3g}",
                f"{t_matmul / row['s']:.2f}",
                f"{t_memory / row['s']:.2f}",
            ]
            if gpu:
                cells.append(f"{100 * row['gbps'] / result['peak_gbps']:.1f}%")
            last = i == len(rows) - 1
            table.add_row(*cells, end_section=last and stack["sorted_kernels"])
        if not stack["sorted_kernels"]:
            table.add_row(
                "",
                f"[dim]median, trimmed mean: skipped (sorts; K P > {result['sort_limit']:.0e})[/]",
                *[""] * (len(columns) - 2),
                end_section=True,
            )
    console.print(table)
    console.print(
        "ms: minimum over the timed calls (after a compiling warm-up; baselines and kernels take turns). "
        "x baseline = baseline time / kernel time (> 1: faster than the baseline). numpy memcpy copies into an existing "
        "buffer; numpy X.copy() and every kernel returning a stack also pay for fresh pages. Codecs: encode + decode of "
        f"every update, vmapped over K; segment mean: K updates into {SEGMENTS} segments; trimmed mean drops {BETA:g} from each end."
    )

    table = Table(
        title=f"top-k of one update [P], k = {TOPK_FRACTION:.0%} of P: GB/s = 4 P bytes / min time"
    )
    pass_name = "jax pass -x" if memory == "jax pass -X" else memory
    columns = ["P, k", "method", "ms", "GB/s", f"time / {pass_name}", "time / argpartition"] + (
        ["% of peak"] if gpu else []
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("P, k", "method") else "right")
    for point in result["topk"]:
        rows = point["rows"]
        t_pass, t_argpartition = (
            seconds_of(rows, pass_name),
            seconds_of(rows, "numpy argpartition(|x|)"),
        )
        for i, row in enumerate(rows):
            name = row["name"] if row["kind"] == "kernel" else f"[cyan]{row['name']}[/] (baseline)"
            cells = [
                f"P={_si(point['p'])}, k={_si(point['k'])}" if i == 0 else "",
                name,
                f"{1e3 * row['s']:.3g}",
                f"{row['gbps']:.3g}",
                f"{row['s'] / t_pass:.1f}",
                f"{row['s'] / t_argpartition:.2f}",
            ]
            if gpu:
                cells.append(f"{100 * row['gbps'] / result['peak_gbps']:.1f}%")
            table.add_row(*cells, end_section=i == len(rows) - 1)
    console.print(table)
    console.print(
        "topk codec encode: x + residual (XLA), the indices of the top k by magnitude (on a CPU numpy's sampled-threshold "
        "selection, hierfl.kernels.selection, through jax.pure_callback), gather, and the new residual; + decode scatters it back."
    )

    table = Table(title="targets (issue 4)")
    for column in ("target", "ratio at each size", "verdict"):
        table.add_column(column)
    for check in result["targets"]:
        ratios = (
            ", ".join(f"{size}: {ratio:.2f}x" for size, ratio in check["ratios"].items()) or "-"
        )
        if not check["sizes"]:
            verdict = "[dim]not measured[/]"
        elif check["met"] == check["sizes"]:
            verdict = "[green]met[/]" + (
                f" at all {check['sizes']} sizes" if check["sizes"] > 1 else ""
            )
        elif check["met"] == 0:
            verdict = "[red]missed[/]" + (
                f" at all {check['sizes']} sizes" if check["sizes"] > 1 else ""
            )
        else:
            verdict = f"[yellow]met at {check['met']} of {check['sizes']} sizes[/]"
        table.add_row(check["target"], ratios, verdict)
    console.print(table)


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="K in {8, 64}, P in {1e5, 1e6}, top-k at 1e6 only, fewer calls",
    )
    parser.add_argument(
        "--max-gb", type=float, default=3.0, help="skip stacks larger than this many GB (default 3)"
    )
    parser.add_argument(
        "--sort-limit",
        type=float,
        default=8e6,
        help="time median and trimmed mean only where K * P <= this (default 8e6)",
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per case (default 3, quick 2)")
    parser.add_argument(
        "--peak-gbps",
        type=float,
        help="the device's memory bandwidth for the %% of peak column (GPU only)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the result JSON to PATH")
    args = parser.parse_args(argv)

    rounds = args.rounds or (2 if args.quick else 3)
    call_budget_s = 0.1 if args.quick else 0.25
    ks, ps = (QUICK_K, QUICK_P) if args.quick else (FULL_K, FULL_P)
    topk_ps = (TOPK_TARGET_P,) if args.quick else FULL_P

    progress = Console(stderr=True)
    result: dict[str, Any] = {
        "environment": environment(),
        "quick": args.quick,
        "sort_limit": args.sort_limit,
        "rounds": rounds,
    }
    result["peak_gbps"], result["peak_source"] = peak_gbps(
        result["environment"]["device_kind"], args.peak_gbps
    )
    result["stacks"] = []
    for k in ks:
        for p in ps:
            nbytes = 4 * k * p
            if nbytes > args.max_gb * 1e9:
                result["stacks"].append(
                    {
                        "k": k,
                        "p": p,
                        "stack_bytes": nbytes,
                        "skipped": f"stack {nbytes / 1e9:.1f} GB > --max-gb {args.max_gb:g}",
                    }
                )
                continue
            progress.log(f"K={k}, P={p:,} ({_megabytes(nbytes)})")
            result["stacks"].append(measure_stack(k, p, args.sort_limit, rounds, call_budget_s))
    result["topk"] = []
    for p in topk_ps:
        progress.log(f"top-k, P={p:,}")
        result["topk"].append(measure_topk(p, rounds, call_budget_s))
    result["targets"] = target_checks(
        result["stacks"], result["topk"], result["environment"]["backend"]
    )
    result["load_after"] = os.getloadavg()[0]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print_report(Console(width=None if sys.stdout.isatty() else 160), result)
    line = json.dumps(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
