"""A server's listening address, checked before the node spends seconds building itself.

A cloud or edge process imports JAX and builds its model, data and compiled programs before
it binds (several seconds of CPU, a minute when 21 processes share 2 cores). A port held
by another program should stop a launch at once, not after that: the node's command
binds its address and releases it first, with nothing heavier than ZeroMQ loaded.
"""

from __future__ import annotations

import zmq

from hierfl.errors import HierflError


class BindError(HierflError):
    """A server's address cannot be bound: another program (or another run) holds it, or it is invalid."""

    def __init__(self, address: str, error: zmq.ZMQError):
        hint = (
            "; another program holds it: stop it, or give this node another address in the topology"
            if error.errno == zmq.EADDRINUSE
            else ""
        )
        super().__init__(f"cannot bind {address}: {error.strerror}{hint}")
        self.address = address


def check_bindable(address: str) -> None:
    """BindError unless a socket can listen at `address` now; the address is free again after.

    An `ipc://` path is only checked for a usable directory (ZeroMQ takes over a stale
    socket file, as the node's own bind will).
    """
    context = zmq.Context.instance()
    socket = context.socket(zmq.ROUTER)
    try:
        socket.bind(address)
    except zmq.ZMQError as err:
        raise BindError(address, err) from None
    finally:
        socket.close(linger=0)
