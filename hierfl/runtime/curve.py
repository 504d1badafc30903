"""CurveZMQ for the runtime's links: key files, and who may connect.

`hierfl keys generate DIR NAME...` writes `NAME.key` (the public key, to list in the
topology's `[runtime.keys]`) and `NAME.key_secret` (the node's key pair, passed to
its command with `--key`). When the topology lists keys, every link is encrypted and
authenticated: a client must know its server's public key (`cloud`, or its plant's
entry in `edges`), and a server admits only clients whose public key is listed (the
cloud: `edges`; an edge: `devices`). Anyone else's handshake fails, so their messages
never reach the node.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from hierfl.errors import HierflError
from hierfl.runtime.node import CurveKeys
from hierfl.topology import Runtime


def generate_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Writes a new key pair for `name` into `directory`: `(public file, secret file)`."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def load_keys(path: Path) -> CurveKeys:
    """A node's key pair from its `.key_secret` file; HierflError if it holds no secret key."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise HierflError(f"{path}: cannot read a key pair ({err})") from None
    if not secret:
        raise HierflError(
            f"{path}: holds no secret key; pass the NAME.key_secret file from `hierfl keys generate`"
        )
    return CurveKeys(public, secret)


def load_public_key(path: Path) -> str:
    """The Z85 public key in a `.key` or `.key_secret` file, as text for the topology."""
    public, _ = zmq.auth.load_certificate(path)
    return public.decode()


class _Allowed:
    def __init__(self, keys: Collection[str]):
        self.keys = {key.encode() for key in keys}

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def start_authenticator(context: zmq.Context, allowed: Collection[str]) -> ThreadAuthenticator:
    """Starts the context's ZAP handler admitting only clients whose public key is in `allowed`."""
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_Allowed(allowed))
    return auth


def check_keys(runtime: Runtime, keys: CurveKeys | None) -> bool:
    """Whether this node runs secure links; HierflError when the topology and `--key` disagree."""
    if runtime.secure and keys is None:
        raise HierflError(
            "the topology lists CurveZMQ keys ([runtime.keys]): pass this node's --key NAME.key_secret"
        )
    if keys is not None and not runtime.secure:
        raise HierflError(
            "--key given but the topology lists no [runtime.keys]; add the public keys or leave out --key"
        )
    return keys is not None
