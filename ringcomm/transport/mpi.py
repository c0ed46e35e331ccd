"""MPI transport: the same algorithms over MPI point-to-point (mpi4py, no pickling).

Forming a world under an MPI launch (importing MPI, the abort hook, exchanging addresses)
is bootstrap and lives in :mod:`ringcomm.rendezvous.mpi`; this module is the transport.

Every segment is one non-blocking ``Isend``/``Irecv`` of bytes straight from and into the
caller's memory; MPI moves it over whatever the job has (shared memory on one node, the
cluster fabric across nodes). Matching is MPI's own: ``(source, tag, communicator)`` with
MPI's guarantee that messages between a pair with one tag never overtake each other.
Collectives and point-to-point messages each get their own duplicate of the communicator,
so a user's tags can never meet a collective's; a collective's MPI tag mixes its sequence
number, step and segment (collisions are harmless: within one communicator every pair
receives in the order it sends).

MPI has no timed wait, so waiting is ``Test`` in a loop: it spins (yielding the core to
runnable peers between tests) for :data:`SPIN_SECONDS`, then sleeps with a growing pause,
so deadlines, ``close()`` and idle ranks behave as on every other transport.

A large MPI send completes only once the receiver has posted its receive (rendezvous
protocol), unlike a socket's: the algorithms never wait for their own sends before
receiving what their peers sent them for that reason.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ringcomm.config import Config
from ringcomm.errors import CommClosedError, CommTimeoutError, TransportError
from ringcomm.logs import get_logger
from ringcomm.transport.base import KIND_P2P, Endpoint, Tag, Transport
from ringcomm.transport.heap import tune_malloc

log = get_logger(__name__)

# Spin this long on an unfinished request before sleeping. Measured with
# `mpiexec -n 4 python bench/collectives.py all_reduce -b 4K -e 16M -f 16` (4 ranks, 2 cores;
# spinning yields the core to runnable peers): 16 MiB took 33.6 ms with no spin, 27.0 ms at
# 0.2 ms, 11.1 ms at 2 ms, 7.9 ms at 20 ms, 8.5 ms at 100 ms; 4 KiB 923, 484, 400, 219 and
# 225 us. At n=2 every spin from 2 ms up gave the same. An idle rank sleeps after 20 ms.
SPIN_SECONDS = 0.02
_MAX_PAUSE_SECONDS = 0.001
_CANCEL_SECONDS = 1.0
_REAP_EVERY = 64
TICK_SECONDS = 0.005


def _mask_below(tag_ub: int) -> int:
    """The largest ``2**k - 1`` that is at most ``tag_ub`` (MPI guarantees >= 32767)."""
    return (1 << ((tag_ub + 1).bit_length() - 1)) - 1


def _bytes(array: np.ndarray) -> np.ndarray:
    """A contiguous array as the flat bytes MPI moves (no copy)."""
    return array.reshape(-1).view(np.uint8)


class _ProgressTicker:
    """Calls into MPI every :data:`TICK_SECONDS` while any MPI transport is open.

    MPI moves protocol traffic only inside MPI calls. A rank that has received a large
    message and gone on to other work (computing, or talking through gloo) may owe its
    sender the rendezvous protocol's final acknowledgement; without a call into MPI that
    sender's flush never completes, and the two wait on each other for good. Seen in
    ``mpiexec -n 4 python bench/ddp_train.py --configs backend,hook --steps 6 --rounds 2``
    (a DDP broadcast on ringcomm, then gloo): 3 hangs in 10 runs before this ticker, none in
    8 after. Each tick is one ``Iprobe`` on a private communicator, which runs MPI's
    progress engine and matches nothing; 200 ticks a second cost next to no CPU.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def acquire(self, mpi: ModuleType) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                self._stop = threading.Event()
                probe_comm = mpi.COMM_WORLD.Dup()
                self._thread = threading.Thread(
                    target=self._run,
                    args=(mpi, probe_comm, self._stop),
                    name="ringcomm-mpi-progress",
                    daemon=True,
                )
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._stop is not None and self._thread is not None:
                self._stop.set()
                self._thread.join()
                self._stop = self._thread = None

    @staticmethod
    def _run(mpi: ModuleType, probe_comm: Any, stop: threading.Event) -> None:
        while not stop.wait(TICK_SECONDS) and not mpi.Is_finalized():
            probe_comm.Iprobe(mpi.ANY_SOURCE, mpi.ANY_TAG)
        if not mpi.Is_finalized():
            probe_comm.Free()


_ticker = _ProgressTicker()


class MpiTransport(Transport):
    """One communicator's MPI transport. Owns ``comm`` (and a duplicate for p2p)."""

    name = "mpi"
    sends_wait_for_receiver = True

    def __init__(self, comm: Any, comm_id: int, config: Config, mpi: ModuleType) -> None:
        super().__init__(comm.Get_rank(), comm.Get_size(), comm_id)
        self._mpi = mpi
        self._config = config
        self._coll = comm
        self._p2p = comm.Dup()
        tag_ub = comm.Get_attr(mpi.TAG_UB) or 32767
        self._tag_mask = _mask_below(tag_ub)
        self.max_tag = self._tag_mask
        self._pending: list[tuple[Any, np.ndarray]] = []  # (send request, memory it reads)
        self._orphans: list[Any] = []  # requests of failed operations MPI could not cancel
        self._detached: list[tuple[Any, np.ndarray]] = []  # copied sends nobody waits for
        self._reap_at = _REAP_EVERY  # grows with what stays unsent: no quadratic rescans
        self._closed = False
        self._scratch = np.empty(0, np.uint8)  # where recv_reduce lands segments
        if config.tune_malloc:
            tune_malloc(config.segment_bytes)
        _ticker.acquire(mpi)

    # -- matching ----------------------------------------------------------------------------
    def _route(self, tag: Tag) -> tuple[Any, int]:
        if tag.kind == KIND_P2P:
            return self._p2p, tag.step & self._tag_mask  # the user's tag (at most max_tag)
        mixed = tag.seq * 65599 + tag.step * 4099 + tag.segment
        return self._coll, mixed & self._tag_mask

    # -- the Transport interface -------------------------------------------------------------
    def send(
        self,
        dst: int,
        tag: Tag,
        payload: np.ndarray,
        *,
        copy: bool = False,
        one_way: bool = False,
    ) -> None:
        if self._closed:
            raise CommClosedError("the communicator is closed")
        data = _bytes(payload.copy() if copy else payload)
        comm, mpi_tag = self._route(tag)
        (self._detached if copy else self._pending).append((comm.Isend(data, dst, mpi_tag), data))
        if len(self._detached) >= self._reap_at:
            self._reap()

    def flush(self, deadline: float) -> None:
        self._reap()
        pending, self._pending = self._pending, []
        for i, (request, data) in enumerate(pending):
            try:
                self._wait(request, deadline, self._send_timeout, f"a send of {data.nbytes} bytes")
            except BaseException:
                for later, memory in pending[i + 1 :]:  # none may read the caller's memory
                    self._cancel(later, f"a send of {memory.nbytes} bytes")
                raise

    def recv(self, src: int, tag: Tag, nbytes: int, deadline: float) -> Any:
        out = np.empty(nbytes, np.uint8)
        self._recv(src, tag, out, deadline)
        return out

    def recv_into(self, src: int, tag: Tag, out: np.ndarray, deadline: float) -> None:
        self._recv(src, tag, _bytes(out), deadline)

    def recv_reduce(
        self,
        src: int,
        tag: Tag,
        out: np.ndarray,
        reduce: Callable[[np.ndarray, np.ndarray], None],
        deadline: float,
    ) -> None:
        """Receive into one scratch buffer reused for every segment, then reduce: a fresh
        buffer per segment would page-fault on every use (see transport.heap)."""
        nbytes = out.nbytes
        if self._scratch.nbytes < nbytes:
            self._scratch = np.empty(nbytes, np.uint8)
        landed = self._scratch[:nbytes]
        self._recv(src, tag, landed, deadline)
        reduce(out, landed.view(out.dtype))

    def probe_p2p(self, tag: int, deadline: float) -> int:
        """See :meth:`Transport.probe_p2p`: MPI's own probe, polled (a blocking probe could
        not be interrupted by close or abort), sleeping in growing pauses."""
        status = self._mpi.Status()
        pause = 0.0
        spin_until = time.monotonic() + SPIN_SECONDS
        while not self._p2p.Iprobe(self._mpi.ANY_SOURCE, tag & self._tag_mask, status):
            now = time.monotonic()
            if self._closed or self.aborted:
                raise self.closed_error()
            if now >= deadline:
                raise self.any_source_timeout(tag)
            if now < spin_until:
                os.sched_yield()
            else:
                pause = min(_MAX_PAUSE_SECONDS, pause * 2 or 50e-6)
                time.sleep(pause)
        return int(status.Get_source())

    def retract(self) -> None:
        """See :meth:`Transport.retract`: pending sends are cancelled (see _cancel for what
        MPI cannot cancel, which is logged)."""
        pending, self._pending = self._pending, []
        for request, data in pending:
            if not request.Test():
                self._cancel(request, f"a send of {data.nbytes} bytes")

    def split(
        self,
        color: int | None,
        key: int,
        new_rank: int,
        addresses: Sequence[bytes],
        comm_id: int,
        endpoint: Endpoint | None,
    ) -> Transport | None:
        # Every rank of the parent got here through the split's allgather, so MPI's
        # blocking Comm_split cannot wait for a missing rank.
        mpi = self._mpi
        sub = self._coll.Split(mpi.UNDEFINED if color is None else color, key)
        if sub == mpi.COMM_NULL:
            return None
        assert sub.Get_rank() == new_rank, (sub.Get_rank(), new_rank)
        return MpiTransport(sub, comm_id, self._config, mpi)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _ticker.release()
        if self._mpi.Is_finalized():
            return
        # Let sends still in flight drain for up to linger_seconds, as ZeroMQ's linger does.
        deadline = time.monotonic() + self._config.linger_seconds
        requests = [r for r, _ in self._pending + self._detached] + self._orphans
        for request in requests:
            while not request.Test() and time.monotonic() < deadline:
                time.sleep(0.001)
        self._orphans.clear()
        self._pending.clear()
        self._detached.clear()
        for comm in (self._p2p, self._coll):
            if comm != self._mpi.COMM_WORLD:
                comm.Free()

    # -- internals ---------------------------------------------------------------------------
    def _reap(self) -> None:
        """Forget copied sends that have completed (their copies go with them)."""
        if self._detached:
            self._detached = [(r, d) for r, d in self._detached if not r.Test()]
        self._reap_at = max(_REAP_EVERY, 2 * len(self._detached))

    def _recv(self, src: int, tag: Tag, out: np.ndarray, deadline: float) -> None:
        if self._closed:
            raise CommClosedError(f"{self.current_op}: the communicator was closed")
        comm, mpi_tag = self._route(tag)
        request = comm.Irecv(out, src, mpi_tag)
        status = self._mpi.Status()
        try:
            what = f"a receive of {out.nbytes} bytes from rank {src}"
            self._wait(request, deadline, lambda: self.timeout_error(src, tag), what, status)
        except self._mpi.Exception as e:
            if e.Get_error_class() == self._mpi.ERR_TRUNCATE:
                raise TransportError(
                    f"{self.current_op}: rank {self.rank} expected {out.nbytes} bytes from "
                    f"rank {src} (step {tag.step}, segment {tag.segment}) but got more; do "
                    "all ranks pass the same count and dtype?"
                ) from None
            raise TransportError(f"{self.current_op}: MPI receive failed: {e}") from None
        got = status.Get_count(self._mpi.BYTE)
        if got != out.nbytes:
            raise self.size_error(src, tag, out.nbytes, got)

    def _send_timeout(self) -> Exception:
        return CommTimeoutError(
            f"{self.current_op} timed out on rank {self.rank}: a peer did not take a message "
            "by the deadline (is it stuck, or issuing different operations?)"
        )

    def _wait(
        self,
        request: Any,
        deadline: float,
        on_timeout: Callable[[], Exception],
        what: str,
        status: Any = None,
    ) -> None:
        """Test ``request`` until done; spin first, then sleep in growing pauses; past the
        deadline (or once closed or aborted) cancel it (``what`` it is: see _cancel)."""
        if request.Test(status):
            return
        spin_until = time.monotonic() + SPIN_SECONDS
        pause = 0.0
        while not request.Test(status):
            now = time.monotonic()
            if self._closed or self.aborted or now >= deadline:
                self._cancel(request, what)
                if self._closed or self.aborted:
                    raise self.closed_error()
                raise on_timeout()
            if now < spin_until:
                os.sched_yield()  # let an oversubscribed peer run; returns at once otherwise
            else:
                pause = min(_MAX_PAUSE_SECONDS, pause * 2 or 50e-6)
                time.sleep(pause)

    def _cancel(self, request: Any, what: str) -> None:
        """Cancel ``request`` (``what``: "a receive of N bytes from rank S", ...), which
        we stop waiting for.

        A receive not yet matched, or a send not yet taken, is cancelled, and MPI touches
        its memory no more. One already under way cannot be: it completes when its peer
        gets to it, and until then MPI may still write (a receive) or read (a send) the
        caller's memory. That is logged at WARNING, and close() waits for such requests
        (up to linger_seconds) before it frees the communicators."""
        try:
            request.Cancel()
            give_up = time.monotonic() + _CANCEL_SECONDS
            while not request.Test() and time.monotonic() < give_up:
                time.sleep(0.001)
        except self._mpi.Exception as e:
            log.warning(
                "rank %d: %s: cancelling %s failed (%s); MPI may still use its memory "
                "after this operation failed",
                self.rank,
                self.current_op,
                what,
                e,
            )
            self._orphans.append(request)
            return
        if not request.Test():
            log.warning(
                "rank %d: %s failed while %s was under way: MPI could not cancel it and may "
                "still %s that buffer until its peer completes it; do not reuse the buffer "
                "before closing the communicator",
                self.rank,
                self.current_op,
                what,
                "write" if what.startswith("a receive") else "read",
            )
            self._orphans.append(request)
