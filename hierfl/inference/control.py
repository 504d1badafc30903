"""The control socket: where a server takes commands that change what it serves (rollback).

Anyone who can reach the request socket may send predictions, but a rollback from an
arbitrary peer would let any of them serve an old model. So control commands are taken
only on a second ROUTER socket bound to a local `ipc://PATH` in a folder that only the
server's user can enter (mode 0700 or stricter, owned by that user): the kernel then
refuses every other local user's connection, and no remote peer can reach it at all.
The folder is created 0700 when missing; an existing folder open to others, an abstract
socket (`ipc://@name`, reachable by every local user) and a TCP address are refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq

from hierfl.errors import InferenceError

MAX_IPC_PATH_BYTES = 107
"""Linux's limit on a Unix socket's path (`sun_path` holds 108 bytes with the final NUL)."""
MAX_CONTROL_MESSAGE_BYTES = 64 << 10
"""Control requests are one small header frame; anything far larger is cut off by ZeroMQ."""


def control_path(address: str) -> Path:
    """The socket file of control address `address` (`ipc://PATH`), its folder checked or made private.

    InferenceError naming the address and the fix if it is not a private local socket.
    """
    scheme, separator, path = address.partition("://")
    if not separator or scheme != "ipc" or not path:
        raise InferenceError(
            f"control address {address!r}: must be ipc://PATH, a local socket in a folder only "
            "this user can enter (e.g. ipc:///run/user/1000/hierfl/control)"
        )
    if path.startswith("@"):
        raise InferenceError(
            f"control address {address!r}: an abstract socket can be reached by every local user; "
            "give a path in a private folder instead"
        )
    socket_file = Path(path).absolute()
    size = len(os.fsencode(socket_file))
    if size > MAX_IPC_PATH_BYTES:
        raise InferenceError(
            f"control address {address!r}: its path {socket_file} is {size} bytes; "
            f"a socket's path takes at most {MAX_IPC_PATH_BYTES}"
        )
    _private_folder(socket_file.parent, address)
    return socket_file


def _private_folder(folder: Path, address: str) -> None:
    """Makes `folder` (mode 0700) if missing; InferenceError if it exists and others may enter it."""
    try:
        folder.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as err:
        raise InferenceError(
            f"control address {address!r}: cannot make folder {folder} ({err.strerror})"
        ) from None
    else:
        folder.chmod(0o700)  # mkdir's mode is reduced by the umask; make sure of it
        return
    info = folder.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise InferenceError(f"control address {address!r}: {folder} is not a folder")
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        owner = "another user's" if info.st_uid != os.getuid() else "this user's"
        raise InferenceError(
            f"control address {address!r}: folder {folder} is {owner} with mode "
            f"{stat.S_IMODE(info.st_mode):04o}, so other users could send control commands; "
            f"use a folder of your own with mode 0700 (`mkdir -m 700 DIR`) or a new one"
        )


def bind_control(context: zmq.Context, address: str) -> zmq.Socket:
    """A ROUTER bound at the checked control address `address` (see `control_path`)."""
    socket_file = control_path(address)
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_MESSAGE_BYTES)
    socket.setsockopt(zmq.LINGER, 1000)
    try:
        socket.bind(f"ipc://{socket_file}")
    except zmq.ZMQError as err:
        socket.close(linger=0)
        raise InferenceError(f"cannot bind the control socket {address!r}: {err}") from None
    return socket
