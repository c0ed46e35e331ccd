"""The endpoint behind ``RINGCOMM_TRANSPORT=auto`` and ``shm``: shared memory with the ranks
that share this host's /dev/shm, ZeroMQ sockets with every other rank."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ringcomm import hosts
from ringcomm.config import Config
from ringcomm.errors import TransportError
from ringcomm.transport.base import Endpoint, Transport
from ringcomm.transport.shm.slots import ShmTransport
from ringcomm.transport.zmq import ZmqEndpoint


class ShmEndpoint(Endpoint):
    """A ZeroMQ endpoint plus what peers need to tell whether they share /dev/shm with us.

    ``mode``: ``auto`` (shared memory with peers on this host, sockets with the rest) or
    ``shm`` (shared memory with every peer, an error where that is impossible).
    """

    def __init__(self, bind_host: str, config: Config, mode: str) -> None:
        self._config = config
        self._mode = mode
        self._zmq: ZmqEndpoint | None = ZmqEndpoint(bind_host, config)
        self._identity = hosts.shm_identity()
        self._address = json.dumps(
            {"zmq": self._zmq.address.decode(), "shm": self._identity}
        ).encode()

    @property
    def address(self) -> bytes:
        return self._address

    def connect(self, rank: int, addresses: Sequence[bytes], comm_id: int) -> Transport:
        records = [json.loads(a) for a in addresses]
        local = [
            r
            for r, rec in enumerate(records)
            if self._identity is not None and rec["shm"] == self._identity
        ]
        if self._mode == "shm" and len(local) != len(records):
            far = sorted(set(range(len(records))) - set(local))
            self.close()
            raise TransportError(
                f"RINGCOMM_TRANSPORT=shm: rank {rank} shares no /dev/shm with rank(s) {far} "
                "(another host, container or user); use the default (auto) to reach them "
                "over sockets"
            )
        assert self._zmq is not None
        if len(local) <= 1:  # nobody to share memory with
            zmq_endpoint, self._zmq = self._zmq, None
            return zmq_endpoint.connect(rank, [r["zmq"].encode() for r in records], comm_id)
        sockets = None
        try:
            if len(local) < len(records):
                far_addresses = [
                    b"" if r in local else rec["zmq"].encode() for r, rec in enumerate(records)
                ]
                zmq_endpoint, self._zmq = self._zmq, None
                sockets = zmq_endpoint.connect(rank, far_addresses, comm_id)
            else:
                self.close()
            return ShmTransport(rank, len(records), comm_id, self._config, local, sockets)
        except BaseException:
            if sockets is not None:
                sockets.close()
            self.close()
            raise

    def close(self) -> None:
        if self._zmq is not None:
            self._zmq.close()
            self._zmq = None
