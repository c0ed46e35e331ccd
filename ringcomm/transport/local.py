"""Thread-rank transport: every rank is a thread of one process, messages go through queues.

For fast tests of algorithm logic; the same matching and checks as every other transport run
on top of it. Each payload is copied at send, as a socket would.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ringcomm.errors import CommTimeoutError
from ringcomm.transport.base import Endpoint, FramedTransport

_inboxes: dict[bytes, queue.SimpleQueue[tuple[bytes, bytes]]] = {}
_inboxes_lock = threading.Lock()
_next_id = itertools.count()


class LocalEndpoint(Endpoint):
    """An inbox registered under a process-unique address."""

    def __init__(self, zero_copy_bytes: int, unmatched_bytes: int = 0) -> None:
        self._zero_copy_bytes = zero_copy_bytes
        self._unmatched_bytes = unmatched_bytes
        self._address = f"local-{next(_next_id)}".encode()
        self._inbox: queue.SimpleQueue[tuple[bytes, bytes]] = queue.SimpleQueue()
        with _inboxes_lock:
            _inboxes[self._address] = self._inbox

    @property
    def address(self) -> bytes:
        return self._address

    def connect(self, rank: int, addresses: Sequence[bytes], comm_id: int) -> LocalTransport:
        with _inboxes_lock:
            missing = [a for a in addresses if a not in _inboxes]
            if missing:
                raise CommTimeoutError(f"local transport: no inbox {missing[0]!r} in this process")
            peers = [_inboxes[a] for a in addresses]
        return LocalTransport(
            rank, comm_id, self._zero_copy_bytes, self, peers, self._unmatched_bytes
        )

    def close(self) -> None:
        with _inboxes_lock:
            _inboxes.pop(self._address, None)

    @property
    def inbox(self) -> queue.SimpleQueue[tuple[bytes, bytes]]:
        return self._inbox


class LocalTransport(FramedTransport):
    """Queues between threads of one process."""

    name = "local"

    def __init__(
        self,
        rank: int,
        comm_id: int,
        zero_copy_bytes: int,
        endpoint: LocalEndpoint,
        peers: list[queue.SimpleQueue[tuple[bytes, bytes]]],
        unmatched_bytes: int = 0,
    ) -> None:
        super().__init__(rank, len(peers), comm_id, zero_copy_bytes, None, unmatched_bytes)
        self._endpoint = endpoint
        self._peers = peers

    def _send_frames(self, dst: int, header: bytes, payload: np.ndarray, copy: bool) -> Any:
        self._peers[dst].put((header, payload.tobytes()))
        return None

    def _wait_sent(self, handles: list[Any], deadline: float) -> None:
        pass  # every send copied

    def _recv_frames(self, timeout: float) -> tuple[bytes, Any] | None:
        try:
            return self._endpoint.inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def _close(self) -> None:
        self._endpoint.close()
