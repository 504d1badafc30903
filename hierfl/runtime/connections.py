"""Which connections of a server's ROUTER have delivered anything; one that ZeroMQ holds back is closed.

A ROUTER without handover (`node.bind_router`) admits one connection per routing id: a
second connection that claims the name of a connected peer completes its handshake, but
libzmq drops its messages before the node sees any of them (and keeps dropping them even
after the first connection is gone), so the node cannot refuse it by name. What the node
can see is the connection itself: the socket monitor gives each accepted connection's file
descriptor, and each message its source descriptor. Every hierfl peer speaks as soon as it
connects (`hello`) and then at least every heartbeat interval, so a connection that has
delivered nothing for `silence` seconds is one ZeroMQ holds back (or a client that never
finished its handshake or never spoke): it is logged once, with its address, and shut down.
An impostor dialing again is held back and shut down again; a peer that restarted so fast
that its old connection was not yet gone when it dialed (held back by the same rule) dials
again by itself, and is admitted, its name now free.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket as os_socket
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

HELD_BACK = (
    "connection from %s has delivered no message in %.0f s since it was accepted: a second "
    "connection under the name of a connected peer (ZeroMQ holds it back, the peer keeps its "
    "link), or a client that never spoke; closed (a restarted peer dials again and is admitted)"
)


@dataclasses.dataclass
class _Connection:
    address: str
    accepted: float
    inode: int | None  # the socket's own identity: a reused descriptor has another
    heard: bool = False
    reported: bool = False


class ConnectionWatch:
    """Follows the connections of one bound ROUTER; `heard` marks each message's connection and
    `check` logs and shuts down those silent for `silence` seconds. `close` before the socket."""

    def __init__(self, socket: zmq.Socket, silence: float, log: logging.Logger):
        self.silence, self.log = silence, log
        self.router = socket
        self.monitor = socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.connections: dict[int, _Connection] = {}
        self.held_back = 0

    def heard(self, frames: list[Any]) -> None:
        """Marks the connection a message (`frames`, copy=False, without the routing id) came over."""
        descriptor = frames[0].get(zmq.SRCFD)
        self._follow_events()
        connection = self.connections.get(descriptor)
        if connection is not None:
            connection.heard = True

    def check(self, now: float | None = None) -> int:
        """Logs and shuts down each connection silent for `silence` s since it was accepted
        (once each); how many are silent now."""
        self._follow_events()
        now = time.monotonic() if now is None else now
        silent = {
            descriptor: connection
            for descriptor, connection in self.connections.items()
            if not connection.heard and now - connection.accepted >= self.silence
        }
        for descriptor, connection in silent.items():
            if not connection.reported:
                connection.reported = True
                self.log.warning(HELD_BACK, connection.address, now - connection.accepted)
                shut_down(descriptor, connection.inode)
        self.held_back = len(silent)
        return self.held_back

    def close(self) -> None:
        self.router.disable_monitor()
        self.monitor.close(linger=0)

    def _follow_events(self) -> None:
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            descriptor = event["value"]
            if event["event"] == zmq.EVENT_ACCEPTED:
                address = peer_address(descriptor, event["endpoint"].decode(errors="replace"))
                inode = socket_inode(descriptor)
                self.connections[descriptor] = _Connection(address, time.monotonic(), inode)
            else:
                self.connections.pop(descriptor, None)


def peer_address(descriptor: int, endpoint: str) -> str:
    """`host:port` of a TCP connection's far end; the bound endpoint for ipc (no peer name)."""
    try:
        connection = os_socket.socket(fileno=descriptor)
    except OSError:
        return endpoint
    try:
        name = connection.getpeername()
    except OSError:
        name = None
    finally:
        connection.detach()  # the descriptor stays libzmq's
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return endpoint


def socket_inode(descriptor: int) -> int | None:
    try:
        return os.fstat(descriptor).st_ino
    except OSError:
        return None


def shut_down(descriptor: int, inode: int | None) -> None:
    """Shuts the connection on `descriptor` down (libzmq then drops it and the peer may dial
    again), unless the descriptor now belongs to another socket than the one accepted."""
    if inode is None or socket_inode(descriptor) != inode:
        return
    try:
        connection = os_socket.socket(fileno=descriptor)
    except OSError:
        return
    try:
        connection.shutdown(os_socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        connection.detach()
