"""CurveZMQ for feeds that leave the host: key files, socket options, the client allow-list.

Keys are read from certificate files made by :func:`zmq.auth.create_certificates`
(``NAME.key`` holds the public key, ``NAME.key_secret`` both keys), never from the
network. A server (``streamer replay``, or any bridge we run) needs its secret key file;
given a clients directory, only the public keys found there (``*.key``) may connect,
checked at each handshake by a ZAP authenticator thread. Without one, any client that
knows the server's public key connects: the traffic is encrypted but not authenticated.
A client (the streamer's feed) needs the server's public key file and its own secret key
file. Make a pair with::

    python -c "import zmq.auth; zmq.auth.create_certificates('keys', 'server')"

The authenticator owns the ZAP endpoint of its ZeroMQ context: one per context.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from hitstream.errors import ConfigError

log = logging.getLogger(__name__)

_Z85_KEY_LEN = 40  # a 32-byte Curve25519 key in Z85 text


def curve_available() -> bool:
    """Whether this libzmq was built with CURVE security."""
    return bool(zmq.has("curve"))


def _require_curve() -> None:
    if not curve_available():
        raise ConfigError("CurveZMQ keys were configured but this libzmq has no CURVE support")


def _load(path: str | Path, what: str) -> tuple[bytes, bytes | None]:
    p = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {p}: cannot read a CurveZMQ certificate ({exc})") from exc
    for key in (public, secret):
        if key is not None and len(key) != _Z85_KEY_LEN:
            raise ConfigError(f"{what} {p}: key of {len(key)} characters, expected 40 (Z85)")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    """The public key in a certificate file (``NAME.key`` or ``NAME.key_secret``)."""
    return _load(path, "CurveZMQ public key file")[0]


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a secret certificate file (``NAME.key_secret``)."""
    public, secret = _load(path, "CurveZMQ secret key file")
    if secret is None:
        raise ConfigError(
            f"CurveZMQ secret key file {path} holds no secret key (give NAME.key_secret, "
            "not the public NAME.key)"
        )
    return public, secret


def configure_client(sock: zmq.Socket, server_public: bytes, keypair: tuple[bytes, bytes]) -> None:
    """Make ``sock`` a CURVE client of the server with public key ``server_public``.

    Call before ``connect``.
    """
    _require_curve()
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair[0])
    sock.setsockopt(zmq.CURVE_SECRETKEY, keypair[1])


def configure_server(sock: zmq.Socket, keypair: tuple[bytes, bytes]) -> None:
    """Make ``sock`` a CURVE server (encrypts, and asks ZAP who may connect). Before ``bind``."""
    _require_curve()
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair[0])
    sock.setsockopt(zmq.CURVE_SECRETKEY, keypair[1])


def client_keys(clients_dir: str | Path) -> list[bytes]:
    """The public keys of the ``*.key`` files in ``clients_dir`` (ConfigError if none)."""
    d = Path(clients_dir)
    if not d.is_dir():
        raise ConfigError(f"CurveZMQ clients directory {d} does not exist")
    keys = [load_public_key(p) for p in sorted(d.glob("*.key"))]
    if not keys:
        raise ConfigError(f"CurveZMQ clients directory {d} holds no public key file (*.key)")
    return keys


def start_authenticator(context: zmq.Context, clients_dir: str | Path) -> ThreadAuthenticator:
    """Allow only the clients whose public keys are in ``clients_dir`` on ``context``'s
    CURVE servers. Start it before binding; :meth:`ThreadAuthenticator.stop` it before the
    context is terminated."""
    _require_curve()
    keys = client_keys(clients_dir)  # fail early, with the directory's name
    auth = ThreadAuthenticator(context, log=log)
    auth.start()
    try:
        auth.configure_curve(domain="*", location=Path(clients_dir))
    except BaseException:
        auth.stop()
        raise
    log.info("CurveZMQ: %d client key(s) allowed from %s", len(keys), clients_dir)
    return auth


def create_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` into ``directory``; return both."""
    _require_curve()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(d, name)
    return Path(public), Path(secret)
