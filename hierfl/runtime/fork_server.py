"""Starts node processes from one process that has already imported them (a fork server).

Every node of a launch is a `python -m hierfl cloud|edge|device|devices ...` process, and each
one used to import JAX, Flax, Optax and the node's modules itself: about 3 s of CPU and 100 MB
of private memory apiece, 63 s of CPU and 2 GB for the 21 processes of `large` on 2 cores.
`hierfl launch` now starts one fork server (`python -m hierfl.cli.fork_server`) that imports
them once and forks every node from there: the node is still its own OS process with its own
pid, log, exit status and signals, running the same `hierfl.cli.commands.main(argv)` as one
started by hand, but its imports cost nothing and their pages are shared until written.

Forking is only safe before anything starts threads that hold locks, so the server imports
and nothing more: no JAX backend (XLA's thread pools start with it), no ZeroMQ context, no
pyarrow jemalloc background thread (`JE_ARROW_MALLOC_CONF`). It checks this after its imports
and refuses to serve otherwise. Linux only (`supported()`); elsewhere launch starts nodes
with `subprocess` as before.

The launcher and the server speak JSON lines over the server's stdin and stdout:
`{"argv": [...], "log": PATH}` asks for a node (its stdout and stderr appended to PATH);
the server answers `{"started": PID}` in order, and `{"exited": PID, "code": N}` when a node
ends (N as `subprocess` gives it: negative for a signal). `ForkServer` and `ForkedProcess` are
the launcher's side; `ForkedProcess` has the `subprocess.Popen` methods launch uses.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hierfl.errors import HierflError

NO_JEMALLOC_THREAD = {"JE_ARROW_MALLOC_CONF": "background_thread:false"}
"""pyarrow's jemalloc starts a background thread when it loads; a process that forks must not have it."""

READY_TIMEOUT = 120.0


class ForkServerError(HierflError):
    """The fork server could not start, or stopped answering."""


def supported() -> bool:
    """Forking a pre-imported Python is sound on Linux; macOS's system libraries are not fork-safe."""
    return sys.platform == "linux"


def is_hierfl_command(command: list[str]) -> bool:
    """Whether `command` is `python -m hierfl ...` with this interpreter (what the server runs)."""
    return command[:3] == [sys.executable, "-m", "hierfl"]


class ForkServer:
    """The launcher's handle on a running fork server: `start(argv, log)` forks a node."""

    def __init__(self, env: Mapping[str, str], log: Path):
        self.env = dict(env)
        with open(log, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hierfl.cli.fork_server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**self.env, **NO_JEMALLOC_THREAD},
            )
        self.log = log
        self.lines = LineReader(self.process.stdout.fileno())
        self.codes: dict[int, int] = {}
        self.lock = threading.Lock()
        self.expect("ready", READY_TIMEOUT)

    def start(self, argv: list[str], log: Path) -> ForkedProcess:
        """Forks a node running `hierfl <argv>`, its output appended to `log`."""
        with self.lock:
            request = json.dumps({"argv": list(argv), "log": str(log)}) + "\n"
            try:
                self.process.stdin.write(request.encode())
                self.process.stdin.flush()
            except BrokenPipeError:
                raise self.died() from None
            pid = self.expect("started", READY_TIMEOUT)
        return ForkedProcess(self, pid, argv)

    def expect(self, kind: str, timeout: float) -> Any:
        """Reads replies until one of `kind` arrives (exits on the way are recorded); returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            for reply in self.lines.read(max(0.0, deadline - time.monotonic())):
                if kind in reply:
                    return reply[kind]
                self.record(reply)
            if self.lines.closed:
                raise self.died()
            if time.monotonic() > deadline:
                raise ForkServerError(
                    f"the fork server sent no {kind!r} in {timeout:.0f} s; see {self.log}"
                )

    def pump(self) -> None:
        """Records the exits the server has reported so far, without waiting (none once closed)."""
        if self.process.stdout.closed:
            return
        with self.lock:
            for reply in self.lines.read(0.0):
                self.record(reply)

    def record(self, reply: dict[str, Any]) -> None:
        if "exited" in reply:
            self.codes[reply["exited"]] = reply["code"]

    def died(self) -> ForkServerError:
        tail = self.log.read_text(errors="replace").splitlines()[-12:] if self.log.exists() else []
        return ForkServerError(
            f"the fork server (pid {self.process.pid}) stopped; the end of {self.log}:\n"
            + "\n".join("  " + line for line in tail)
        )

    def close(self) -> None:
        """Lets the server exit (nodes still running carry on, as `subprocess` children would)."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


class ForkedProcess:
    """A node forked by the server, with the part of `subprocess.Popen`'s interface launch uses."""

    def __init__(self, server: ForkServer, pid: int, argv: list[str]):
        self.server = server
        self.pid = pid
        self.args = argv
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server.pump()
            self.returncode = self.server.codes.get(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            if self.server.process.poll() is not None and self.returncode is None:
                self.server.pump()
                if self.poll() is None:
                    raise self.server.died()
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class LineReader:
    """JSON lines from a pipe, read without blocking past a timeout."""

    def __init__(self, fd: int):
        self.fd = fd
        self.pending = b""
        self.closed = False

    def read(self, timeout: float) -> list[dict[str, Any]]:
        """The complete lines available within `timeout` s (all that have arrived, at least one if any does)."""
        replies = []
        wait = timeout
        while not self.closed:
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                break
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.closed = True
                break
            self.pending += chunk
            *lines, self.pending = self.pending.split(b"\n")
            replies += [json.loads(line) for line in lines if line.strip()]
            wait = 0.0
        return replies


# The server's loop (`hierfl.cli.fork_server` runs it, and turns a forked child into its node).


def serve(requests: int, replies: int) -> dict[str, Any] | None:
    """Forks a node per request until the launcher closes `requests`; in a forked child it
    returns that child's request (the caller turns the process into the node), in the
    server None once the launcher has gone."""
    lines = LineReader(requests)
    while True:
        reap(replies)
        for request in lines.read(0.05):
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                return request
            reply(replies, {"started": pid})
            say(f"pid {pid}: hierfl {' '.join(request['argv'])}")
        if lines.closed:
            say("the launcher has closed its requests; stopped")
            return None


def reap(replies: int) -> None:
    """Reports every node that has ended since the last call."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        reply(replies, {"exited": pid, "code": code})
        say(f"pid {pid}: exited with status {code}")


def say(line: str) -> None:
    """A line of the server's own log (its stderr), timestamped as the nodes' logs are."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    print(f"{stamp} fork server: {line}", file=sys.stderr, flush=True)


def reply(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def fork_safety_problems() -> list[str]:
    """Why forking this process now would be unsafe (empty if it is safe)."""
    import jax._src.xla_bridge as xla_bridge

    problems = []
    if xla_bridge.backends_are_initialized():
        problems.append("a JAX backend is initialized (XLA's threads would not survive a fork)")
    threads = [
        Path(f"/proc/self/task/{task}/comm").read_text().strip()
        for task in os.listdir("/proc/self/task")
    ]
    own = Path("/proc/self/comm").read_text().strip()  # OpenBLAS's workers keep the process's name
    foreign = [name for name in threads if name != own]
    if foreign:
        problems.append(f"threads other than Python's and OpenBLAS's are running: {foreign}")
    return problems
