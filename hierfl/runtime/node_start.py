"""How `hierfl launch` starts its node processes: `fork` (the default on Linux) or `exec`.

`exec` runs each node's command with `subprocess`, and every node imports JAX and its modules
itself. `fork` forks every `python -m hierfl ...` node from one fork server that has imported
them already (`hierfl.runtime.fork_server`): the same processes, without the imports' CPU
and with their memory shared; a command of another kind, or one with another environment
than the server's, still goes through `exec`. Both give processes with the `subprocess.Popen`
methods launch uses (`pid`, `poll`, `wait`, `send_signal`, `kill`, `returncode`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from hierfl.runtime import fork_server

Process = subprocess.Popen | fork_server.ForkedProcess


class Exec:
    """Every node a fresh `subprocess.Popen` of its command."""

    name = "exec"

    def start(self, command: list[str], env: dict[str, str], log: Path) -> Process:
        with open(log, "ab") as out:
            return subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def close(self) -> None:
        pass


class Fork:
    """`hierfl` nodes forked from a fork server (started on first use, its log `server_log`)."""

    name = "fork"

    def __init__(self, server_log: Path):
        self.server_log = server_log
        self.server: fork_server.ForkServer | None = None

    def start(self, command: list[str], env: dict[str, str], log: Path) -> Process:
        if not fork_server.is_hierfl_command(command):
            return Exec().start(command, env, log)
        if self.server is None:
            self.server = fork_server.ForkServer(env, self.server_log)
        if env != self.server.env:
            return Exec().start(command, env, log)
        return self.server.start(command[3:], log)

    def close(self) -> None:
        """Lets the server go (it forks no more); nodes still running carry on."""
        if self.server is not None:
            self.server.close()
            self.server = None


START_METHODS = ("fork", "exec")


def default_start_method() -> str:
    return "fork" if fork_server.supported() else "exec"


def starter(method: str, logs: Path) -> Exec | Fork:
    """The starter for `method` ("fork" or "exec"; "fork" where forking is unsupported is "exec")."""
    if method == "fork" and fork_server.supported():
        return Fork(logs / "fork-server.log")
    return Exec()
