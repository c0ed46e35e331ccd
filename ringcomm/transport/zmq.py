"""ZeroMQ transport: one PULL socket per rank for everything it receives, one PUSH socket per
peer for what it sends; ``ipc://`` between ranks of one host, ``tcp://`` across hosts.

Large payloads leave from the caller's memory as a second frame (``copy=False`` with a
``MessageTracker``); small ones are copied into one frame behind the header: tracking costs
more than copying a few KiB, and one frame is one trip through libzmq instead of two.
Received payloads are ZeroMQ frames; the algorithms reduce straight out of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from ringcomm import hosts
from ringcomm.config import Config
from ringcomm.errors import CommTimeoutError, PeerLostError, TransportError
from ringcomm.logs import get_logger
from ringcomm.security import Security
from ringcomm.transport import zmq_context
from ringcomm.transport.base import HEADER, WAKE_SECONDS, Endpoint, FramedTransport
from ringcomm.transport.heap import tune_malloc

log = get_logger(__name__)


# Heartbeats on every data connection, so a peer that vanished without closing its
# sockets (a cut link, a host gone) is noticed within seconds, not at the timeout.
_HEARTBEAT_IVL_MS = 1000
_HEARTBEAT_TIMEOUT_MS = 3000
_LOST_GRACE_SECONDS = 0.2
_REVOKE_SECONDS = 5.0  # how long a revoked send's memory may stay in libzmq's hands
_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "another security mechanism, or a malformed handshake",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "wrong credentials",
}
_HANDSHAKE_FAILED = sum(_HANDSHAKE_FAILURES)


def mpi_is_initialized() -> bool:
    """Whether this process has initialised MPI through mpi4py (without importing it)."""
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and bool(mpi.Is_initialized()) and not mpi.Is_finalized()


_warned_without_secret = False


def _warn_without_secret(rank: int, addresses: Sequence[bytes], my_host: str) -> None:
    """Once per process: a world that spans hosts and has no job secret accepts anyone who
    can reach its sockets (see docs/security.md)."""
    global _warned_without_secret
    if _warned_without_secret:
        return
    far = [r for r, raw in enumerate(addresses) if raw and json.loads(raw)["host"] != my_host]
    if far:
        _warned_without_secret = True
        log.warning(
            "rank %d: this world spans hosts (ranks %s are on others) and has no job secret: "
            "any process that can reach its sockets or its rendezvous store can join it or "
            "inject messages. Set RINGCOMM_SECRET to the same value on every rank "
            "(ringcomm-run and MPI launches make one; RINGCOMM_ENCRYPT=1 also encrypts)",
            rank,
            far,
        )


class ZmqEndpoint(Endpoint):
    """A bound PULL socket, reachable over tcp:// at ``bind_host`` and, on one host, ipc://."""

    def __init__(self, bind_host: str, config: Config) -> None:
        self._config = config
        if config.tune_malloc:
            tune_malloc(config.segment_bytes)
        self._ctx = zmq_context.acquire(config.zmq_io_threads)
        self._closed = False
        try:
            self._bind(bind_host, config)
        except BaseException:
            self.close()
            raise

    def _bind(self, bind_host: str, config: Config) -> None:
        self._refusals: zmq.Socket | None = None
        self._ipc_path: str | None = None
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 0)  # never drop: flow control is the algorithm's
        self._pull.setsockopt(zmq.LINGER, 0)
        self._security = Security(config.secret, config.encrypt)
        self._security.serve(self._pull)  # only members of the job may connect
        # Refused handshakes (no secret, a wrong one, another mechanism) end inside
        # ZeroMQ; its monitor tells us, and report_refusals() logs them.
        if self._security.mechanism != "none":
            self._refusals = self._pull.get_monitor_socket(_HANDSHAKE_FAILED)
        addr: dict[str, str] = {"host": hosts.host_identity()}
        if config.zmq_protocol in ("auto", "tcp"):
            port = self._pull.bind_to_random_port(f"tcp://{bind_host}")
            addr["tcp"] = f"tcp://{bind_host}:{port}"
        if config.zmq_protocol in ("auto", "ipc"):
            self._ipc_path = os.path.join(
                tempfile.gettempdir(), f"ringcomm-{uuid.uuid4().hex[:16]}.ipc"
            )
            self._pull.bind(f"ipc://{self._ipc_path}")
            addr["ipc"] = f"ipc://{self._ipc_path}"
        self._address = json.dumps(addr).encode()

    @property
    def address(self) -> bytes:
        return self._address

    def connect(self, rank: int, addresses: Sequence[bytes], comm_id: int) -> ZmqTransport:
        mine = json.loads(self._address)
        pushes: dict[int, zmq.Socket] = {}
        try:
            for peer, raw in enumerate(addresses):
                if peer == rank or not raw:  # not raw: a peer reached another way (shm)
                    continue
                theirs = json.loads(raw)
                same_host = theirs["host"] == mine["host"] and "ipc" in theirs
                url = theirs["ipc"] if same_host else theirs.get("tcp")
                if url is None:
                    raise TransportError(
                        f"rank {rank} cannot reach rank {peer}: it offers only ipc:// and runs "
                        "on another host (RINGCOMM_ZMQ_PROTOCOL=ipc is for one host)"
                    )
                push = self._ctx.socket(zmq.PUSH)
                push.setsockopt(zmq.SNDHWM, 0)
                push.setsockopt(zmq.LINGER, int(self._config.linger_seconds * 1000))
                # ZMTP heartbeats: a peer behind a cut link (no FIN, no RST) is dropped
                # after HEARTBEAT_TIMEOUT, and the monitor below reports it.
                push.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_IVL_MS)
                push.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
                self._security.join(push)
                push.connect(url)
                pushes[peer] = push
        except BaseException:
            for push in pushes.values():
                push.close(linger=0)
            self.close()
            raise
        if self._security.mechanism == "none":
            _warn_without_secret(rank, addresses, mine["host"])
        return ZmqTransport(rank, len(addresses), comm_id, self._config, self, pushes)

    def report_refusals(self) -> None:
        """Log (WARNING) every connection refused for want of this job's secret so far."""
        while self._refusals is not None and self._refusals.poll(0):
            event = recv_monitor_message(self._refusals)
            why = _HANDSHAKE_FAILURES.get(event["event"], "handshake failed")
            log.warning(
                "refused a connection to %s without this job's secret (%s)",
                event["endpoint"].decode(errors="replace"),
                why,
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._refusals is not None:
            self.report_refusals()
            self._pull.disable_monitor()
            self._refusals.close(linger=0)
            self._refusals = None
        if hasattr(self, "_pull"):
            self._pull.close(linger=0)
        if self._ipc_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._ipc_path)
        zmq_context.release(self._ctx)  # the last user's release ends its threads

    @property
    def pull(self) -> zmq.Socket:
        return self._pull


class ZmqTransport(FramedTransport):
    """The connected ZeroMQ transport of one communicator."""

    name = "zmq"

    def __init__(
        self,
        rank: int,
        size: int,
        comm_id: int,
        config: Config,
        endpoint: ZmqEndpoint,
        pushes: dict[int, zmq.Socket],
    ) -> None:
        zero_copy_bytes = config.zero_copy_bytes
        if mpi_is_initialized():
            # With MPI initialised, MPICH's UCX memory-event hooks (UCX_MEM_EVENTS) were seen
            # to stall zero-copy sends for good: the suite under mpiexec -n 3 hung in 3 of
            # 4 runs, in none of 10 with the hooks or zero-copy off. Copy every payload.
            zero_copy_bytes = sys.maxsize
        # Credits per peer (see FramedTransport); at least two segments, so that taking
        # what is in flight always returns credit for the next one.
        window = max(config.socket_window_bytes, 2 * config.segment_bytes)
        super().__init__(
            rank,
            size,
            comm_id,
            zero_copy_bytes,
            window if config.socket_window_bytes else None,
            config.unmatched_bytes,
        )
        self._endpoint = endpoint
        self._pull = endpoint.pull
        self._pushes = pushes
        self._rcvtimeo_ms = -1
        # A peer's process that exits (or a link that dies, see the heartbeats) drops our
        # connection to it: the monitors report that while an operation waits.
        self._monitors = {
            peer: push.get_monitor_socket(zmq.EVENT_DISCONNECTED) for peer, push in pushes.items()
        }
        self._lost: dict[int, float] = {}  # peer -> when its connection dropped

    def _send_frames(self, dst: int, header: bytes, payload: np.ndarray, copy: bool) -> Any:
        sock = self._pushes[dst]
        if copy:
            # One frame: a second frame costs a second trip through libzmq on both ends.
            sock.send(b"".join((header, payload)))
            return None
        sock.send(header, zmq.SNDMORE)
        return sock.send(payload, copy=False, track=True)

    def _wait_sent(self, handles: list[Any], deadline: float) -> None:
        for tracker in handles:
            while not tracker.done:
                if self.aborted:
                    raise self.closed_error()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommTimeoutError(
                        f"{self.current_op} timed out on rank {self.rank}: ZeroMQ had not sent "
                        "a payload by the deadline (is a peer stuck?)"
                    )
                with contextlib.suppress(zmq.NotDone):
                    tracker.wait(min(remaining, WAKE_SECONDS))

    def _revoke(self, handles: list[Any]) -> None:
        """Zero-copy frames libzmq has not sent yet point at the caller's memory, and would
        leave after this operation failed, with whatever the caller wrote there since.
        Closing the sending sockets at once drops them (a frame cut off mid-way is discarded
        by the receiver, which then sees the connection drop and fails): the peers get the
        bytes as they were, or an error. Waits until libzmq lets go of the memory."""
        if all(tracker.done for tracker in handles):
            return
        log.warning(
            "rank %d: %s failed with sends still under way; closing its connections so "
            "that they cannot deliver bytes the caller may change",
            self.rank,
            self.current_op,
        )
        for peer, push in self._pushes.items():
            if not push.closed:
                push.disable_monitor()
                self._monitors[peer].close(linger=0)
                push.close(linger=0)
        for tracker in handles:
            with contextlib.suppress(zmq.NotDone):
                tracker.wait(_REVOKE_SECONDS)
            if not tracker.done:
                log.warning("rank %d: ZeroMQ still holds a revoked send's memory", self.rank)

    def _recv_frames(self, timeout: float) -> tuple[bytes, Any] | None:
        # A blocking receive with RCVTIMEO: one call into libzmq (GIL released while it
        # waits), where try/poll/retry costs a Poller and an exception per message.
        flags = zmq.NOBLOCK if timeout <= 0 else 0
        if not flags:
            timeout_ms = int(timeout * 1000) + 1
            if timeout_ms != self._rcvtimeo_ms:
                self._pull.setsockopt(zmq.RCVTIMEO, timeout_ms)
                self._rcvtimeo_ms = timeout_ms
        try:
            frames = self._pull.recv_multipart(flags, copy=False)
        except zmq.Again:
            return None
        if len(frames) == 2:  # [header, payload]: a payload sent from the sender's memory
            return frames[0].bytes, frames[1]
        if len(frames) == 1:  # header and a small, copied payload in one frame
            view = frames[0].buffer
            return bytes(view[: HEADER.size]), view[HEADER.size :]
        log.warning("rank %d: dropped a message of %d frames", self.rank, len(frames))
        return None

    def _check_peer(self, src: int) -> None:
        self._endpoint.report_refusals()
        self._check_lost(src)

    def _check_lost(self, src: int) -> None:
        """Raise :class:`PeerLostError` when our connection to ``src`` dropped (its
        process ended, or its heartbeats stopped) and nothing came from it for
        ``_LOST_GRACE_SECONDS`` since: what it sent before it closed has arrived by then."""
        now = time.monotonic()
        for peer, monitor in self._monitors.items():
            while monitor.poll(0):
                if recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
                    self._lost.setdefault(peer, now)
        lost_at = self._lost.get(src)
        if lost_at is not None and now - lost_at >= _LOST_GRACE_SECONDS:
            names = " and ".join(f"rank {r}" for r in sorted(self._lost))
            raise PeerLostError(
                f"{self.current_op}: rank {self.rank} lost its connection to {names} while "
                f"waiting for rank {src} (a process ended, or no heartbeat for "
                f"{_HEARTBEAT_TIMEOUT_MS / 1000:.0f}s)"
            )

    def _close(self) -> None:
        for peer, push in self._pushes.items():
            if push.closed:  # revoked after a failure
                continue
            push.disable_monitor()
            self._monitors[peer].close(linger=0)
            push.close()
        self._endpoint.close()
