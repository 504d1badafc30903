"""`python -m hierfl.cli.fork_server`: the fork server `hierfl launch` starts its nodes from.

It imports what every node imports (`PRELOAD`), checks that forking is safe
(`hierfl.runtime.fork_server.fork_safety_problems`), says it is ready, and forks a node per
request; each child runs `hierfl.cli.commands.main(argv)` as `python -m hierfl ARGV` would.
The protocol and the launcher's side are in `hierfl.runtime.fork_server`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hierfl.runtime.fork_server import fork_safety_problems, reply, say, serve

PRELOAD = (
    "hierfl.cli.commands",
    "hierfl.cli.runtime",
    "hierfl.runtime.cloud",
    "hierfl.runtime.edge",
    "hierfl.runtime.device",
    "hierfl.runtime.host",
)
"""What every node imports first; the server imports these before it forks anyone."""


def become_node(request: dict[str, Any], requests: int, replies: int) -> int:
    """In a forked child: drops the server's pipes, sends stdout and stderr to the node's log,
    restores the signals the server ignores, and runs `hierfl <argv>`."""
    os.close(requests)
    os.close(replies)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    Path("/proc/self/comm").write_text(f"hierfl-{request['argv'][0]}"[:15])  # as top, ps -e show it
    sys.argv = [
        importlib.util.find_spec("hierfl.__main__").origin,
        *request["argv"],
    ]  # as -m sets it
    from hierfl.cli.commands import main as hierfl_main

    return hierfl_main(request["argv"])


def main() -> int:
    # Ctrl-C reaches the nodes too; the server stays to report their exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.perf_counter()
    for module in PRELOAD:
        __import__(module)
    problems = fork_safety_problems()
    if problems:
        say("not safe to fork: " + "; ".join(problems))
        return 1
    say(f"imported the nodes' modules in {time.perf_counter() - started:.1f} s; forking nodes")
    requests = os.dup(0)
    replies = os.dup(1)
    reply(replies, {"ready": True})
    request = serve(requests, replies)
    if request is None:
        return 0
    return become_node(request, requests, replies)


if __name__ == "__main__":
    sys.exit(main())
