"""A small key/value store for bootstrap: ``set``, ``get`` (waits for the key), ``add``.

Rank 0 hosts :class:`StoreServer` at MASTER_ADDR:MASTER_PORT (a ZeroMQ ROUTER socket served
by one thread); every rank talks to it through :class:`StoreClient`. :class:`LocalStore` is
the same store for thread ranks in one process.
"""

from __future__ import annotations

import abc
import itertools
import socket
import threading
import time
from collections import defaultdict

import zmq

from ringcomm.errors import RendezvousError
from ringcomm.logs import get_logger
from ringcomm.security import Security
from ringcomm.transport import zmq_context

log = get_logger(__name__)


class Store(abc.ABC):
    """The bootstrap key/value store."""

    @abc.abstractmethod
    def set(self, key: str, value: bytes) -> None:
        """Set ``key``; waiters on it wake up."""

    @abc.abstractmethod
    def get(self, key: str, timeout: float) -> bytes:
        """Return the value of ``key``, waiting up to ``timeout`` seconds for it to be set."""

    @abc.abstractmethod
    def add(self, key: str, amount: int) -> int:
        """Add ``amount`` to the counter ``key`` (0 if unset) and return the new value."""

    def close(self) -> None:  # noqa: B027 (optional hook: LocalStore holds no sockets)
        """Release the store's sockets."""


class StoreServer:
    """Serves the store on ``tcp://host:port`` from a daemon thread until :meth:`close`."""

    def __init__(
        self, host: str, port: int, security: Security | None = None, io_threads: int = 1
    ) -> None:
        self.url = f"tcp://{host}:{port}"
        self._ctx = zmq_context.acquire(io_threads)
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if security is not None:
            security.serve(self._sock)
        try:
            self._sock.bind(self.url)
        except zmq.ZMQError as e:
            self._sock.close()
            zmq_context.release(self._ctx)
            raise RendezvousError(
                f"rank 0 could not host the rendezvous store at {self.url}: {e}; choose another "
                "MASTER_PORT, or set MASTER_ADDR to an address of rank 0's host"
            ) from None
        self._data: dict[bytes, bytes] = {}
        self._waiters: dict[bytes, list[tuple[bytes, bytes]]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ringcomm-store", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sock = self._sock
        while not self._stop.is_set():
            if not sock.poll(100):
                continue
            frames = sock.recv_multipart()
            try:
                replies = self._handle(frames)
            except Exception as e:  # any request, however malformed, gets an answer
                log.warning("store: refused a malformed request: %s", e)
                replies = [[frames[0], frames[1], b"error", f"malformed request: {e}".encode()]]
            for reply in replies:
                sock.send_multipart(reply)
        sock.close(linger=0)
        zmq_context.release(self._ctx)

    def _handle(self, frames: list[bytes]) -> list[list[bytes]]:
        """The replies to one request ``[ident, req_id, op, key, value]`` (a ``set`` also
        answers the ``get`` requests that waited for its key). Raises ValueError for a
        request that is not one of the store's."""
        if len(frames) < 2:
            return []  # not even an id to answer to
        if len(frames) != 5:
            raise ValueError(f"{len(frames) - 1} frames, expected 4")
        ident, req_id, op, key, value = frames
        if op == b"set":
            self._data[key] = value
            waiters = self._waiters.pop(key, [])
            return [[ident, req_id, b"ok", b""]] + [[w, r, b"ok", value] for w, r in waiters]
        if op == b"get":
            if key in self._data:
                return [[ident, req_id, b"ok", self._data[key]]]
            self._waiters[key].append((ident, req_id))
            return []
        if op == b"add":
            total = _counter(self._data.get(key, b"0"), key) + _counter(value, b"the amount")
            self._data[key] = str(total).encode()
            return [[ident, req_id, b"ok", self._data[key]]]
        raise ValueError(f"unknown op {op[:16]!r}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # the thread closes the socket and releases the context


def _counter(raw: bytes, what: bytes) -> int:
    """``raw`` as the integer an ``add`` works on."""
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{what[:32]!r} is not an integer: {raw[:32]!r}") from None


class StoreClient(Store):
    """Talks to a :class:`StoreServer`; every request is bounded by a timeout."""

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        timeout: float,
        security: Security | None = None,
        io_threads: int = 1,
    ) -> None:
        self.url = f"tcp://{host}:{port}"
        self._rank = rank
        self._timeout = timeout
        self._ctx = zmq_context.acquire(io_threads)
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if security is not None:
            security.join(self._sock)
        self._sock.connect(self.url)  # never fails: ZeroMQ retries until the server is up
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def _request(self, op: bytes, key: str, value: bytes, timeout: float) -> bytes:
        with self._lock:
            req_id = str(next(self._ids)).encode()
            self._sock.send_multipart([req_id, op, key.encode(), value])
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._sock.poll(int(remaining * 1000) + 1):
                    raise RendezvousError(
                        f"rank {self._rank}: no answer from the rendezvous store at {self.url} "
                        f"within {timeout:.1f}s ({op.decode()} {key!r}); is rank 0 running, and "
                        "do MASTER_ADDR/MASTER_PORT point at it?"
                    )
                got_id, status, reply = self._sock.recv_multipart()
                if got_id != req_id:
                    continue  # the late answer to an earlier, timed-out request
                if status != b"ok":
                    raise RendezvousError(f"store at {self.url}: {reply.decode()}")
                return reply

    def set(self, key: str, value: bytes) -> None:
        self._request(b"set", key, value, self._timeout)

    def get(self, key: str, timeout: float) -> bytes:
        return self._request(b"get", key, b"", timeout)

    def add(self, key: str, amount: int) -> int:
        return int(self._request(b"add", key, str(amount).encode(), self._timeout))

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)
            zmq_context.release(self._ctx)


class LocalStore(Store):
    """The store for thread ranks of one process."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition()

    def set(self, key: str, value: bytes) -> None:
        with self._cond:
            self._data[key] = value
            self._cond.notify_all()

    def get(self, key: str, timeout: float) -> bytes:
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._data, timeout):
                raise RendezvousError(f"local store: {key!r} was not set within {timeout:.1f}s")
            return self._data[key]

    def add(self, key: str, amount: int) -> int:
        with self._cond:
            total = int(self._data.get(key, b"0")) + amount
            self._data[key] = str(total).encode()
            self._cond.notify_all()
            return total


def resolve_host(addr: str) -> str:
    """``addr`` as an IPv4 address, or a RendezvousError saying it cannot be resolved."""
    try:
        return socket.gethostbyname(addr)
    except OSError as e:
        raise RendezvousError(f"cannot resolve MASTER_ADDR {addr!r}: {e}") from None
