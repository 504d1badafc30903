"""`hierfl serve` as an edge box runs it: real processes, real ZeroMQ sockets on ipc://.

Models are exported from freshly initialised digits MLPs (two seeds = two versions whose
logits differ everywhere), so every reply can be checked against the in-process model of
the version it claims; nothing here depends on timing except generous upper bounds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import msgpack
import numpy as np
import pytest
import zmq

from hierfl.cli.commands import build_parser
from hierfl.data.tasks import TASKS
from hierfl.data.tasks.models import build_model
from hierfl.errors import InferenceError
from hierfl.inference.artifact import read_artifact, write_artifact
from hierfl.inference.client import Client
from hierfl.inference.export import export_model
from hierfl.inference.protocol import encode_request, parse_reply
from hierfl.inference.server import InferenceServer, ServerConfig

HIERFL = Path(sys.executable).parent / "hierfl"
START_TIMEOUT = 180.0
REPLY_TIMEOUT = 60.0

LOAD_CLIENT = r"""
import sys, time
from pathlib import Path
import numpy as np
from hierfl.inference.client import Client

address, inputs, out, progress, new_version = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
x = np.load(inputs)
versions, rows, logits = [], [], []
new_replies, deadline = 0, time.monotonic() + 240
with Client(address, timeout=60) as client:
    for i in range(200_000):
        row = i % len(x)
        prediction = client.predict(x[row : row + 1])  # raises if a request is refused or unanswered
        versions.append(prediction.version)
        rows.append(row)
        logits.append(prediction.logits[0].copy())
        if i == 20:
            progress.touch()
        new_replies += prediction.version == new_version
        if new_replies >= 20 or time.monotonic() > deadline:
            break
np.savez(out, versions=np.array(versions), rows=np.array(rows), logits=np.array(logits))
"""


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Two versions of a digits MLP as files, probe inputs, and each version's in-process logits on them."""
    task = TASKS["digits"]
    folder = tmp_path_factory.mktemp("models")
    probes = np.random.default_rng(0).uniform(0, 1, (16, *task.input_shape)).astype(np.float32)
    files, expected = {}, {}
    for version, seed in ((1, 1), (2, 2)):
        model, params = build_model("mlp", task.models["mlp"], jax.random.key(seed))
        files[version] = write_artifact(
            folder / f"v{version}.hfl", export_model(model, params, task, version=version)
        )
        expected[version] = np.asarray(jax.jit(model.apply)(params, probes))
    assert np.abs(expected[1] - expected[2]).min() > 1e-4  # a reply's logits tell its version
    np.save(folder / "probes.npy", probes)
    return {
        "files": files,
        "expected": expected,
        "probes": probes,
        "probes_file": folder / "probes.npy",
    }


@pytest.fixture
def sockets():
    """A short directory for ipc:// sockets (socket paths are limited to about 100 characters)."""
    path = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(HIERFL), *args], stdout=out, stderr=subprocess.STDOUT, text=True
        )


def wait_until_serving(process: subprocess.Popen, address: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with Client(address, timeout=2.0) as client:
        while True:
            assert process.poll() is None, (
                f"server exited with {process.returncode}:\n{log.read_text()}"
            )
            try:
                client.info()
                return
            except InferenceError:
                assert time.monotonic() < deadline, (
                    f"server did not answer within {START_TIMEOUT} s:\n{log.read_text()}"
                )


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition, what: str, timeout: float = START_TIMEOUT, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(step)
    return result


@pytest.fixture(scope="module")
def server(versions):
    """`hierfl serve v1.hfl` with batches of at most 4 rows, for the request tests."""
    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    address = f"ipc://{folder}/serve.ipc"
    log = folder / "server.log"
    process = start(
        "serve", str(versions["files"][1]), "--bind", address, "--max-batch", "4", log=log
    )
    try:
        wait_until_serving(process, address, log)
        yield address
    finally:
        stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def test_server_predictions_equal_the_in_process_model(server, versions):
    probes, expected = versions["probes"], versions["expected"][1]
    with Client(server, timeout=REPLY_TIMEOUT) as client:
        info = client.info()
        assert (info.task, info.model, info.version, info.versions) == ("digits", "mlp", 1, (1,))
        assert (info.input_shape, info.input_dtype, info.max_batch, info.platform) == (
            (8, 8, 1),
            "float32",
            4,
            "cpu",
        )
        for start_row, rows in ((0, 1), (1, 3), (4, 4), (8, 2)):
            prediction = client.predict(probes[start_row : start_row + rows])
            assert prediction.version == 1
            np.testing.assert_allclose(
                prediction.logits, expected[start_row : start_row + rows], rtol=1e-5, atol=1e-5
            )
            assert prediction.labels == [
                str(k) for k in expected[start_row : start_row + rows].argmax(axis=1)
            ]


def test_bad_requests_get_error_replies_and_the_server_keeps_serving(server, versions):
    good = np.zeros((1, 8, 8, 1), np.float32)
    nan = good.copy()
    nan[0, 3, 3, 0] = np.nan
    bad = [
        (
            encode_request("predict", 1, np.zeros((1, 8, 8), np.float32)),
            "wrong input shape [1, 8, 8]",
        ),
        (encode_request("predict", 2, good.astype(np.float64)), "dtype 'float64'"),
        (
            encode_request("predict", 3, np.zeros((5, 8, 8, 1), np.float32)),
            "request has 5 rows: too large",
        ),
        (encode_request("predict", 4, nan), "NaN or infinite"),
        ([encode_request("predict", 5, good)[0], b"\0" * 10], "data frame has 10 bytes"),
        ([encode_request("predict", 6, good)[0]], "a predict request is [header, data]"),
        (
            [msgpack.packb({"kind": "retrain", "protocol": 1, "id": 7})],
            "unknown request kind 'retrain'",
        ),
        ([b"\xc1 not msgpack"], "header frame is not msgpack"),
        ([b"\x92\x01\x02"], "header must be a msgpack map"),
        (  # a request id nested a thousand levels deep: Python's repr of it would recurse to death
            [b"\x83\xa4kind\xa7predict\xa8protocol\x01\xa2id" + b"\x91" * 1000 + b"\x07"],
            "nests deeper than",
        ),
        (
            [msgpack.packb({"kind": "info", "protocol": 1, "id": 8, "x": [0] * 300})],
            "exceeds max_array_len",
        ),
    ]
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(server)
    try:
        for frames, expected in bad:
            dealer.send_multipart(frames)
            assert dealer.poll(REPLY_TIMEOUT * 1000), (
                f"no reply to a request expected to fail with {expected!r}"
            )
            reply = parse_reply(dealer.recv_multipart())
            assert reply.kind == "error" and reply.version == 1
            assert expected in reply.header["error"], reply.header["error"]
        req = context.socket(zmq.REQ)  # a REQ peer's envelope has an empty delimiter frame
        req.connect(server)
        req.send_multipart(encode_request("predict", 99, versions["probes"][:2]))
        assert req.poll(REPLY_TIMEOUT * 1000)
        reply = parse_reply(req.recv_multipart())
        np.testing.assert_allclose(reply.y, versions["expected"][1][:2], rtol=1e-5, atol=1e-5)
        req.close(linger=0)
    finally:
        dealer.close(linger=0)
        context.term()
    with Client(server, timeout=REPLY_TIMEOUT) as client:
        assert client.predict(versions["probes"][:1]).version == 1
        assert client.info().stats["rejected_requests"] >= len(bad)
        with pytest.raises(InferenceError, match="this server has none: start it with --control"):
            client.rollback()  # a control command, and this server has no control socket


def test_predict_command(server, versions, tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    random = subprocess.run(
        [str(HIERFL), "predict", server, "--random", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert random.returncode == 0, random.stderr
    assert "digits mlp version 1" in random.stdout and "probability" in random.stdout
    one = tmp_path / "one.npy"
    np.save(one, versions["probes"][5].astype(np.float64))  # one example, float64: batched and cast
    from_file = subprocess.run(
        [str(HIERFL), "predict", server, str(one)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert from_file.returncode == 0, from_file.stderr
    label = str(versions["expected"][1][5].argmax())
    assert re.search(rf"│\s+0 │ {label}\s+│", from_file.stdout), from_file.stdout
    nobody = subprocess.run(
        [
            str(HIERFL),
            "predict",
            "ipc:///tmp/hfl-nobody-listens.ipc",
            "--random",
            "1",
            "--timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert (
        nobody.returncode == 2 and "no reply" in nobody.stderr and "Traceback" not in nobody.stderr
    )


def hierfl_predict(*args: str, columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HIERFL), "predict", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": str(columns)},
    )


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of each body row of a rich table."""
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in stdout.splitlines()
        if line.startswith("│")
    ]


def test_predict_sends_a_csv_file_in_batches_and_answers_every_row_in_order(
    server, versions, tmp_path
):
    probes, expected = versions["probes"], versions["expected"][1]
    table = tmp_path / "readings.csv"  # a header row, then one example of 64 numbers per row
    header = ",".join(f"p{k}" for k in range(64))
    table.write_text(
        header
        + "\n"
        + "\n".join(",".join(map(repr, row)) for row in probes[:10].reshape(10, 64).tolist())
        + "\n"
    )
    done = hierfl_predict(server, str(table))
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert [r[0] for r in rows] == [str(i) for i in range(10)]  # 10 rows through max batch 4
    assert [r[1] for r in rows] == [str(k) for k in expected[:10].argmax(axis=1)]
    many = tmp_path / "many.npy"
    np.save(many, probes[:9])
    done = hierfl_predict(server, str(many))
    assert done.returncode == 0, done.stderr
    assert [r[1] for r in table_rows(done.stdout)] == [str(k) for k in expected[:9].argmax(axis=1)]


def test_predict_refuses_bad_input_in_one_line_naming_the_place(server, versions, tmp_path):
    with Client(server, timeout=REPLY_TIMEOUT) as client:
        rejected = client.info().stats["rejected_requests"]
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 5), np.float32))
    nan = tmp_path / "nan.npy"
    x = versions["probes"][:6].copy()
    x[2, 0, 0, 0] = x[5, 1, 1, 0] = np.nan
    np.save(nan, x)
    text = tmp_path / "bad.csv"
    text.write_text("a,b\n" + "0.5,1\n" * 2 + "0.5,oops\n")
    cases = [
        (wrong, "wrong.npy: examples of shape [3, 5]; the model takes [n, 8, 8, 1]"),
        (nan, "nan.npy: examples 2, 5 (counted from 0) hold NaN"),
        (text, "bad.csv, row 4, column 2 ('b'): 'oops' is not a number"),
    ]
    for path, expected in cases:
        refused = hierfl_predict(server, str(path), columns=60)  # a message is never wrapped
        assert refused.returncode == 2, refused.stdout
        assert refused.stderr.count("\n") == 1 and expected in refused.stderr, refused.stderr
    with Client(server, timeout=REPLY_TIMEOUT) as client:  # refused before sending
        assert client.info().stats["rejected_requests"] == rejected


def test_serve_refuses_a_wait_that_is_not_a_finite_number_of_milliseconds(capsys):
    """`--max-wait-ms inf` used to pass and kill the server at its first request."""
    parser = build_parser()
    for value in ("inf", "nan", "-1", "1e300"):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(
                ["serve", "m.hfl", "--bind", "tcp://127.0.0.1:*", "--max-wait-ms", value]
            )
        assert exited.value.code == 2
        error = capsys.readouterr().err.splitlines()[-1]
        assert error.endswith(f"--max-wait-ms: must be in [0, 600000] ms, got {value}"), error
    args = parser.parse_args(["serve", "m.hfl", "--bind", "tcp://*:5600", "--max-wait-ms", "2.5"])
    assert args.max_wait_ms == 2.5
    for command in (
        ["predict", "tcp://h:1", "--timeout"],
        ["publish", "m.hfl", "--bind", "x", "--every"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "inf"])
        assert "must be a finite number > 0, got inf" in capsys.readouterr().err
    with pytest.raises(InferenceError, match="max_wait_ms must be in"):
        ServerConfig(bind="tcp://127.0.0.1:*", max_wait_ms=float("inf"))


def test_requests_from_several_peers_are_batched_and_answered_row_by_row(versions, sockets):
    """A batch runs when `max_batch` rows wait (the wait limit is far away); each peer gets its own rows."""
    address = f"ipc://{sockets}/batch.ipc"
    config = ServerConfig(bind=address, max_batch=4, max_wait_ms=600_000)
    probes, expected = versions["probes"], versions["expected"][1]
    context = zmq.Context()
    peers = [context.socket(zmq.DEALER) for _ in range(2)]
    with InferenceServer(versions["files"][1], config) as server:
        server.start()
        try:
            for peer in peers:
                peer.connect(address)
            peers[0].send_multipart(encode_request("predict", 1, probes[0:1]))
            peers[1].send_multipart(encode_request("predict", 2, probes[1:4]))
            replies = []
            for peer in peers:
                assert peer.poll(REPLY_TIMEOUT * 1000), "no reply: the batch of 4 rows did not run"
                replies.append(parse_reply(peer.recv_multipart()))
            assert [r.id for r in replies] == [1, 2]
            np.testing.assert_allclose(replies[0].y, expected[0:1], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(replies[1].y, expected[1:4], rtol=1e-5, atol=1e-5)
            peers[0].send_multipart(
                encode_request("info", 3)
            )  # answered by the serving thread, after the batch
            assert peers[0].poll(REPLY_TIMEOUT * 1000)
            stats = parse_reply(peers[0].recv_multipart()).header["info"]["stats"]
            assert (stats["batches"], stats["requests"], stats["rows"]) == (1, 2, 4)
        finally:
            for peer in peers:
                peer.close(linger=0)
            context.term()


def run_load(address: str, versions, folder: Path, clients: int, new_version: int):
    """Starts `clients` load-client processes; returns them once each has had 21 replies."""
    processes = []
    for i in range(clients):
        args = [
            address,
            str(versions["probes_file"]),
            str(folder / f"client{i}.npz"),
            str(folder / f"progress{i}"),
            str(new_version),
        ]
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", LOAD_CLIENT, *args], stderr=subprocess.PIPE, text=True
            )
        )
    for i, process in enumerate(processes):
        started = folder / f"progress{i}"
        wait_for(
            lambda started=started, process=process: started.exists() or process.poll() is not None,
            f"client {i} to get going",
        )
        assert process.poll() is None, process.stderr.read()
    return processes


def check_load(processes, versions, folder: Path) -> None:
    """Every client got every reply; versions go 1 -> 2 once; each reply's logits are its version's."""
    for i, process in enumerate(processes):
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, f"client {i} lost a request or failed:\n{errors}"
        result = np.load(folder / f"client{i}.npz")
        versions_seen, rows, logits = result["versions"], result["rows"], result["logits"]
        assert set(versions_seen) == {1, 2}
        switch = int(np.argmax(versions_seen == 2))
        assert (versions_seen[:switch] == 1).all() and (versions_seen[switch:] == 2).all(), (
            "a reply from the old version came after the new one"
        )
        for version in (1, 2):
            mine = versions_seen == version
            np.testing.assert_allclose(
                logits[mine], versions["expected"][version][rows[mine]], rtol=1e-5, atol=1e-5
            )


def test_hot_swap_from_a_publisher_under_load_loses_no_request(versions, sockets):
    address, publisher_address = f"ipc://{sockets}/serve.ipc", f"ipc://{sockets}/models.ipc"
    control = f"ipc://{sockets}/control/serve.ipc"
    server = start(
        "serve",
        str(versions["files"][1]),
        "--bind",
        address,
        "--control",
        control,
        "--subscribe",
        publisher_address,
        "--max-batch",
        "8",
        "--max-wait-ms",
        "1",
        log=sockets / "server.log",
    )
    publisher = None
    try:
        wait_until_serving(server, address, sockets / "server.log")
        clients = run_load(address, versions, sockets, clients=3, new_version=2)
        publisher = start(
            "publish",
            str(versions["files"][2]),
            "--bind",
            publisher_address,
            "--every",
            "0.5",
            log=sockets / "publisher.log",
        )
        check_load(clients, versions, sockets)
        with Client(address, timeout=REPLY_TIMEOUT) as client:
            info = client.info()
            assert (info.version, info.versions) == (2, (1, 2))
            assert info.stats["swaps"] == 1  # republished copies of version 2 are not loaded again
            assert info.stats["rejected_requests"] == 0 and info.stats["failed_requests"] == 0
        refused = subprocess.run(
            [str(HIERFL), "rollback", address], capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 2 and "control command" in refused.stderr
        rolled = subprocess.run(
            [str(HIERFL), "rollback", control], capture_output=True, text=True, timeout=120
        )
        assert rolled.returncode == 0, rolled.stderr
        assert "version 1" in rolled.stdout
        with Client(address, timeout=REPLY_TIMEOUT) as client:
            prediction = client.predict(versions["probes"][:3])
            assert prediction.version == 1
            np.testing.assert_allclose(
                prediction.logits, versions["expected"][1][:3], rtol=1e-5, atol=1e-5
            )
            assert client.info().versions == (1,)
    finally:
        stop(*(p for p in (publisher, server) if p is not None))


def test_hot_swap_from_a_watched_directory_and_bad_files_are_refused(versions, sockets):
    models = sockets / "models"
    models.mkdir()
    shutil.copy(versions["files"][1], models / "v1.hfl")
    address = f"ipc://{sockets}/serve.ipc"
    server = start(
        "serve",
        str(models / "v1.hfl"),
        "--bind",
        address,
        "--watch",
        str(models),
        log=sockets / "server.log",
    )
    try:
        wait_until_serving(server, address, sockets / "server.log")
        clients = run_load(address, versions, sockets, clients=2, new_version=2)
        write_artifact(
            models / "v2.hfl", read_artifact(versions["files"][2])
        )  # temporary file, then rename
        check_load(clients, versions, sockets)

        broken = bytearray(versions["files"][2].read_bytes())
        broken[-100] ^= 0xFF
        (models / "broken.hfl").write_bytes(bytes(broken))
        task = TASKS["bearing-fault"]
        model, params = build_model("cnn1d", task.models["cnn1d"], jax.random.key(0))
        write_artifact(models / "bearing.hfl", export_model(model, params, task, version=9))
        with Client(address, timeout=REPLY_TIMEOUT) as client:
            info = wait_for(
                lambda: (i := client.info()).stats["rejected_artifacts"] >= 2 and i,
                "both bad files to be refused",
                step=0.3,
            )
            assert (info.version, info.stats["swaps"]) == (2, 1)
            assert client.predict(versions["probes"][:1]).version == 2
        log = (sockets / "server.log").read_text()
        assert "checksum mismatch" in log and "cannot replace the served model" in log
    finally:
        stop(server)
