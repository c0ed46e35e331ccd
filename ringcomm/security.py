"""Who may connect: the job secret, and CurveZMQ encryption.

With a job secret (``RINGCOMM_SECRET``; ``ringcomm-run`` makes a fresh one per job, an MPI
launch has rank 0 make one and broadcast it), every ringcomm ZeroMQ socket, the rendezvous
store's and the data sockets alike, runs a ZAP-checked handshake:

- by default ZeroMQ's PLAIN mechanism: the connecting side presents a name derived from
  the secret and the secret itself. The handshake is in clear (as the data is); it keeps
  out processes that do not know the secret, not eavesdroppers.
- with ``RINGCOMM_ENCRYPT=1``, CurveZMQ: every byte is encrypted and authenticated. The
  servers' and the clients' key pairs are both derived from the secret, so nothing but the
  secret has to travel: a process that does not know it can neither complete a handshake
  nor read the traffic.

A refused handshake never reaches ringcomm's code: ZeroMQ drops the connection, and the
data socket's monitor has it logged at WARNING (``ringcomm.transport.zmq``). Without a
secret nothing is checked (as before). Shared memory is not a socket: its segments are
created 0600, so only processes of the same user can map them, and they are unlinked as
soon as all ranks have mapped them.
"""

from __future__ import annotations

import hashlib
import threading

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from ringcomm.logs import get_logger

log = get_logger(__name__)

DOMAIN = "ringcomm"


def _derive(secret: str, role: str) -> bytes:
    return hashlib.blake2b(
        secret.encode(), digest_size=32, person=f"ringcomm-{role}".encode()
    ).digest()


def _keypair(secret: str, role: str) -> tuple[bytes, bytes]:
    """A CURVE key pair (z85 secret, z85 public) derived from the job secret."""
    secret_key = z85.encode(_derive(secret, role))
    return secret_key, zmq.curve_public(secret_key)


class Security:
    """How this job's ZeroMQ sockets authenticate (see the module docstring).

    Args:
        secret: the job secret; None: no checks.
        encrypt: CurveZMQ instead of PLAIN (needs a secret).
    """

    def __init__(self, secret: str | None, encrypt: bool = False) -> None:
        if encrypt and not secret:
            raise ValueError(
                "RINGCOMM_ENCRYPT=1 needs a job secret: set RINGCOMM_SECRET (ringcomm-run and "
                "MPI launches make one)"
            )
        self.secret = secret or None
        self.encrypt = encrypt
        if self.secret is not None:
            self.user = "ringcomm-" + _derive(self.secret, "user").hex()[:16]
        if encrypt:
            assert self.secret is not None
            self._server_secret, self._server_public = _keypair(self.secret, "server")
            self._client_secret, self._client_public = _keypair(self.secret, "client")

    @property
    def mechanism(self) -> str:
        """``none``, ``plain`` or ``curve``."""
        return "none" if self.secret is None else "curve" if self.encrypt else "plain"

    def serve(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (bound) accept only members of the job. Call before bind."""
        if self.secret is None:
            return
        _authenticator(sock.context).admit(self)
        sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN.encode())
        if self.encrypt:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._server_secret)
        else:
            sock.setsockopt(zmq.PLAIN_SERVER, 1)

    def join(self, sock: zmq.Socket) -> None:
        """Give ``sock`` (connecting) this job's credentials. Call before connect."""
        if self.secret is None:
            return
        if self.encrypt:
            sock.setsockopt(zmq.CURVE_SERVERKEY, self._server_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self._client_public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._client_secret)
        else:
            sock.setsockopt(zmq.PLAIN_USERNAME, self.user.encode())
            sock.setsockopt(zmq.PLAIN_PASSWORD, self.secret.encode())


class _Admission:
    """One ZAP handler per ZeroMQ context, admitting every secret this process joined
    with (a process may hold communicators of two jobs)."""

    def __init__(self, ctx: zmq.Context) -> None:
        self._auth = ThreadAuthenticator(ctx, log=log)
        self._auth.start()
        self._passwords: dict[str, str] = {}
        self._client_keys: set[bytes] = set()
        self._lock = threading.Lock()

    def admit(self, security: Security) -> None:
        with self._lock:
            assert security.secret is not None
            self._passwords[security.user] = security.secret
            self._auth.configure_plain(domain=DOMAIN, passwords=dict(self._passwords))
            if security.encrypt:
                self._client_keys.add(security._client_public)
                self._auth.configure_curve_callback(domain=DOMAIN, credentials_provider=self)

    def stop(self) -> None:
        self._auth.stop()

    def callback(self, domain: str, key: bytes) -> bool:
        """CURVE: admit clients holding a key derived from a secret we know."""
        return key in self._client_keys


_admissions: dict[int, _Admission] = {}
_admissions_lock = threading.Lock()


def forget(ctx: zmq.Context) -> None:
    """Stop the authenticator of ``ctx`` (before the context is terminated)."""
    with _admissions_lock:
        admission = _admissions.pop(id(ctx), None)
    if admission is not None:
        admission.stop()


def _authenticator(ctx: zmq.Context) -> _Admission:
    with _admissions_lock:
        admission = _admissions.get(id(ctx))
        if admission is None:
            admission = _admissions[id(ctx)] = _Admission(ctx)
        return admission
