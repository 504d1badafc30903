"""Per-round cost of secure aggregation and of CKKS against the plain float32 path, in one run.

    python benchmarks/privacy.py            # SecAgg N in {10, 50} x P in {1e5, 1e6}, CKKS K in {4, 16} x P in {1e5, 1e6}
    python benchmarks/privacy.py --quick    # N = 10, K = 4, P = 1e5 only, and 3-round launches
    python benchmarks/privacy.py --json out.json

SecAgg (`hierfl.privacy.secagg`): N devices of one edge, P float32 parameters each, all four
steps run in this process with every message msgpack-encoded as the runtime would frame it.
Per device: the time of its four steps (fixed-point encoding included) and the bytes it
sends and receives; at the edge: the time of its four steps (mask removal and decoding
included) and the bytes it sends and receives. Run once with no dropout and once with 10%
of the devices dropping after sharing their keys (the edge then rebuilds their pairwise
masks with every survivor). Baseline, same run: a device serializes its float32 update
(`tobytes`), the edge reads N frames (`np.frombuffer`) and sums them.

CKKS (`hierfl.privacy.homomorphic`): K edges each encrypt a P-value summary, the cloud
computes the weighted sum of the ciphertexts, each edge decrypts. Baseline, same run: each
edge sends its float32 summary, the cloud computes `w @ X` in numpy, the edge reads the result.
Also the largest absolute error of the decrypted aggregate against float64.

Times are the minimum of `--repeats` rounds (wall clock, one process: no network).

Then, unless `--no-runtime`, the same protections in the live runtime, also in this run
(`benchmarks/privacy_runtime.py`): `hierfl launch` of one small federation plain, with
secure aggregation, with CKKS summaries and with both, every node its own process; seconds
per cloud round and bytes per device and per tier, each against the plain launch.

The last stdout line is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any

import msgpack
import numpy as np
from rich.console import Console
from rich.table import Table

from hierfl.privacy import homomorphic as he
from hierfl.privacy import secagg
from hierfl.privacy.fixed_point import FixedPoint

THRESHOLD = 0.6
DROP_FRACTION = 0.1


def frame(message: Any) -> bytes:
    return msgpack.packb(message)


def unframe(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def best_of(repeats: int, run):
    results = [run() for _ in range(repeats)]
    return min(results, key=lambda r: r["device_s"] + r["edge_s"])


def secagg_round(updates: dict[str, np.ndarray], dropped: set[str]) -> dict[str, float]:
    """One round with msgpack frames: per-device mean time and bytes, edge time and bytes."""
    count, size = len(updates), len(next(iter(updates.values())))
    threshold = secagg.secagg_threshold(_privacy(), count)
    codec = FixedPoint(clip=1.0, summands=count)
    device_time = dict.fromkeys(updates, 0.0)
    sent = dict.fromkeys(updates, 0)
    received = dict.fromkeys(updates, 0)
    edge_time = 0.0

    def on_device(device, step):
        nonlocal device_time
        start = time.perf_counter()
        data = frame(step())
        device_time[device] += time.perf_counter() - start
        sent[device] += len(data)
        return data

    def on_edge(step):
        nonlocal edge_time
        start = time.perf_counter()
        result = step()
        edge_time += time.perf_counter() - start
        return result

    devices = {d: secagg.DeviceSession(d, 0, threshold, size) for d in updates}
    edge = secagg.EdgeSession(0, threshold, size)
    adverts = [on_device(d, s.advertise) for d, s in devices.items()]
    roster = frame(on_edge(lambda: edge.collect_keys([unframe(a) for a in adverts])))
    for d in devices:
        received[d] += len(roster)
    shares = [on_device(d, lambda s=s: s.share_keys(unframe(roster))) for d, s in devices.items()]
    inboxes = on_edge(
        lambda: {v: frame(m) for v, m in edge.route_shares([unframe(m) for m in shares]).items()}
    )
    masked = []
    for d, inbox in inboxes.items():
        received[d] += len(inbox)
        if d not in dropped:
            masked.append(
                on_device(
                    d,
                    lambda d=d, inbox=inbox: devices[d].masked_input(
                        unframe(inbox), codec.encode(updates[d])
                    ),
                )
            )
    request = frame(on_edge(lambda: edge.collect_masked([unframe(m) for m in masked])))
    reveals = []
    for d in edge.survivors:
        received[d] += len(request)
        reveals.append(on_device(d, lambda d=d: devices[d].unmask(unframe(request))))
    total = on_edge(lambda: codec.decode(edge.finish([unframe(r) for r in reveals])))
    reference = np.sum([updates[d].astype(np.float64) for d in edge.survivors], axis=0)
    survivors = edge.survivors
    edge_sent = (
        len(roster) * count + sum(len(m) for m in inboxes.values()) + len(request) * len(survivors)
    )
    return {
        "device_s": float(np.mean([device_time[d] for d in survivors])),
        "device_up_bytes": float(np.mean([sent[d] for d in survivors])),
        "device_down_bytes": float(np.mean([received[d] for d in survivors])),
        "edge_s": edge_time,
        "edge_in_bytes": float(sum(sent.values())),
        "edge_out_bytes": float(edge_sent),
        "max_abs_error": float(np.abs(total - reference).max()),
    }


def plain_round(updates: dict[str, np.ndarray]) -> dict[str, float]:
    start = time.perf_counter()
    frames = [u.astype(np.float32).tobytes() for u in updates.values()]
    device_s = (time.perf_counter() - start) / len(updates)
    start = time.perf_counter()
    np.sum([np.frombuffer(f, dtype=np.float32) for f in frames], axis=0)
    return {
        "device_s": device_s,
        "edge_s": time.perf_counter() - start,
        "device_up_bytes": float(len(frames[0])),
    }


def _privacy():
    from hierfl.topology import Privacy

    return Privacy(secure_aggregation=True, secagg_threshold=THRESHOLD)


def ckks_round(
    secret: Any, public: Any, summaries: list[np.ndarray], weights: np.ndarray
) -> dict[str, float]:
    start = time.perf_counter()
    messages = [frame(he.encrypt_summary(secret, s, w, 0)) for s, w in zip(summaries, weights)]
    encrypt_s = (time.perf_counter() - start) / len(summaries)
    start = time.perf_counter()
    aggregate = frame(
        he.weighted_sum(public, [unframe(m) for m in messages], list(weights / weights.sum()))
    )
    cloud_s = time.perf_counter() - start
    start = time.perf_counter()
    values = he.decrypt_aggregate(secret, unframe(aggregate))
    decrypt_s = time.perf_counter() - start
    reference = (weights / weights.sum()) @ np.stack(summaries).astype(np.float64)
    return {
        "encrypt_s": encrypt_s,
        "cloud_s": cloud_s,
        "decrypt_s": decrypt_s,
        "up_bytes": float(len(messages[0])),
        "down_bytes": float(len(aggregate)),
        "max_abs_error": float(np.abs(values - reference).max()),
    }


def plain_cloud_round(summaries: list[np.ndarray], weights: np.ndarray) -> dict[str, float]:
    start = time.perf_counter()
    frames = [s.astype(np.float32).tobytes() for s in summaries]
    encrypt_s = (time.perf_counter() - start) / len(summaries)
    start = time.perf_counter()
    stack = np.stack([np.frombuffer(f, dtype=np.float32) for f in frames])
    result = ((weights / weights.sum()).astype(np.float32) @ stack).tobytes()
    cloud_s = time.perf_counter() - start
    start = time.perf_counter()
    np.frombuffer(result, dtype=np.float32).copy()
    return {
        "encrypt_s": encrypt_s,
        "cloud_s": cloud_s,
        "decrypt_s": time.perf_counter() - start,
        "up_bytes": float(len(frames[0])),
        "down_bytes": float(len(result)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10, K = 4, P = 1e5 only")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--no-runtime", action="store_true", help="skip the live-runtime comparison (4 launches)"
    )
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    devices = (10,) if args.quick else (10, 50)
    edges = (4,) if args.quick else (4, 16)
    sizes = (100_000,) if args.quick else (100_000, 1_000_000)
    rng = np.random.default_rng(0)
    console = Console(width=160)
    result: dict[str, Any] = {"secagg": [], "ckks": []}

    table = Table(title="Secure aggregation, one edge round (per device: mean over survivors)")
    for column in (
        "N",
        "P",
        "dropped",
        "device ms",
        "x plain",
        "device up KB",
        "x plain",
        "device down KB",
        "edge ms",
        "x plain",
        "edge in MB",
        "max |err|",
    ):
        table.add_column(column, justify="right")
    for count in devices:
        for size in sizes:
            updates = {
                f"p/l/d{i:03d}": rng.normal(0, 0.05, size).astype(np.float32) for i in range(count)
            }
            plain = min(
                (plain_round(updates) for _ in range(args.repeats)),
                key=lambda r: r["device_s"] + r["edge_s"],
            )
            for dropped in (set(), set(list(updates)[: max(1, round(DROP_FRACTION * count))])):
                row = best_of(args.repeats, lambda: secagg_round(updates, dropped))
                result["secagg"].append(
                    {
                        "devices": count,
                        "params": size,
                        "dropped": len(dropped),
                        **row,
                        "plain": plain,
                    }
                )
                table.add_row(
                    str(count),
                    f"{size:.0e}",
                    str(len(dropped)),
                    f"{1e3 * row['device_s']:.1f}",
                    f"{row['device_s'] / plain['device_s']:.0f}",
                    f"{row['device_up_bytes'] / 1e3:.0f}",
                    f"{row['device_up_bytes'] / plain['device_up_bytes']:.3f}",
                    f"{row['device_down_bytes'] / 1e3:.1f}",
                    f"{1e3 * row['edge_s']:.1f}",
                    f"{row['edge_s'] / plain['edge_s']:.0f}",
                    f"{row['edge_in_bytes'] / 1e6:.1f}",
                    f"{row['max_abs_error']:.1e}",
                )
    console.print(table)

    secret_bytes = he.generate_keys()
    secret, public = he.load_context(secret_bytes), he.load_context(he.public_context(secret_bytes))
    table = Table(
        title="CKKS edge summaries (degree 8192, moduli 60/40/60 bits, scale 2^40), one cloud round"
    )
    for column in (
        "K",
        "P",
        "encrypt ms/edge",
        "x plain",
        "cloud ms",
        "x plain",
        "decrypt ms",
        "up MB/edge",
        "x float32",
        "down MB",
        "x float32",
        "max |err|",
    ):
        table.add_column(column, justify="right")
    for count in edges:
        for size in sizes:
            summaries = [rng.normal(0, 0.01, size).astype(np.float32) for _ in range(count)]
            weights = rng.uniform(10, 100, count)
            plain = min(
                (plain_cloud_round(summaries, weights) for _ in range(args.repeats)),
                key=lambda r: r["cloud_s"],
            )
            row = min(
                (ckks_round(secret, public, summaries, weights) for _ in range(args.repeats)),
                key=lambda r: r["cloud_s"],
            )
            result["ckks"].append({"edges": count, "params": size, **row, "plain": plain})
            table.add_row(
                str(count),
                f"{size:.0e}",
                f"{1e3 * row['encrypt_s']:.0f}",
                f"{row['encrypt_s'] / plain['encrypt_s']:.0f}",
                f"{1e3 * row['cloud_s']:.0f}",
                f"{row['cloud_s'] / plain['cloud_s']:.0f}",
                f"{1e3 * row['decrypt_s']:.0f}",
                f"{row['up_bytes'] / 1e6:.2f}",
                f"{row['up_bytes'] / plain['up_bytes']:.1f}",
                f"{row['down_bytes'] / 1e6:.2f}",
                f"{row['down_bytes'] / plain['down_bytes']:.1f}",
                f"{row['max_abs_error']:.1e}",
            )
    console.print(table)

    if not args.no_runtime:
        from privacy_runtime import compare_protections, protections_table

        rounds = 3 if args.quick else 4
        result["runtime"] = compare_protections(devices=4, rounds=rounds)
        console.print(
            protections_table(
                result["runtime"],
                f"hierfl launch, 2 plants x 4 devices, digits MLP, per cloud round (rounds 2..{rounds})",
            )
        )
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
