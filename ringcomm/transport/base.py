"""What every transport offers the algorithms (:class:`Transport`), and what the message
transports (ZeroMQ, local) share (:class:`FramedTransport`): the wire header, tag matching,
timeouts.

A framed message is ``[header, payload]``. The header is a fixed struct::

    magic u32 | version u16 | kind u16 | comm_id u64 | seq u64 | step u32 | segment u32
    | nbytes u64 | src u32

``(kind, seq, step, segment)`` is the tag. Collectives use their operation sequence number as
``seq``; point-to-point messages use the n-th send of a (peer, user tag) pair as ``seq`` and
the user tag as ``step``, so messages of different operations can never be confused. Messages
that arrive before they are wanted wait in a stash keyed by ``(src, tag)``.

Flow control (credits): a sender may have at most ``window_bytes`` of collective messages in
flight to each peer, counted from the send until the receiver's algorithm has taken them;
what does not fit waits in the sender's queue (as a reference to the caller's memory, or a
copy for a copied send) and goes out as credits come back. The receiver returns credit in
``KIND_CREDIT`` messages (the byte count in the ``seq`` field) once half a window has been
taken, so a receiver holds at most about one window per peer whatever the message size, and
credits cost one small message per half window. Point-to-point messages are not metered (a
send never waits for its receiver), nor are copied control records of at most
``UNMETERED_BYTES`` (the diagnosis protocol's records must get through a full window).

The MPI transport matches with MPI's own (source, tag, communicator) instead and carries no
header. A transport belongs to one communicator and is driven by whichever thread holds that
communicator's execution lock, so nothing here is locked.
"""

from __future__ import annotations

import abc
import collections
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ringcomm.errors import CommClosedError, CommTimeoutError, TransportError
from ringcomm.logs import get_logger

log = get_logger(__name__)

HEADER = struct.Struct("<IHHQQIIQI")
MAGIC = 0x52434D31  # "RCM1"
VERSION = 1
KIND_COLLECTIVE = 0
KIND_P2P = 1
KIND_CREDIT = 2  # flow control: the receiver took ``seq`` bytes of collective messages
# Copied collective messages this small go out even through a full window (see above).
UNMETERED_BYTES = 1024

# While blocked on a receive, wake this often to notice close()/abort().
WAKE_SECONDS = 0.2
_NO_PAYLOAD = np.empty(0, np.uint8)


class Tag(NamedTuple):
    """Identifies one message of one operation."""

    kind: int
    seq: int
    step: int
    segment: int


class Endpoint(abc.ABC):
    """A transport half-built: bound and addressable, not yet connected to its peers."""

    @property
    @abc.abstractmethod
    def address(self) -> bytes:
        """What peers need to reach this endpoint (opaque bytes, exchanged at rendezvous)."""

    @abc.abstractmethod
    def connect(self, rank: int, addresses: Sequence[bytes], comm_id: int) -> Transport:
        """Connect to every peer (``addresses[r]`` is rank r's) and return the transport."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the endpoint without connecting (e.g. a rank left out of a split)."""


# Makes this rank's endpoint for the world and for every split; None where the transport
# splits itself (MPI).
EndpointFactory = Callable[[], Endpoint | None]


class Transport(abc.ABC):
    """Moves tagged messages between the ranks of one communicator.

    Attributes:
        name: what :attr:`Communicator.transport` reports (``shm``, ``shm+zmq``, ``zmq``,
            ``mpi``, ``local``).
        max_tag: the largest user tag point-to-point messages may carry.
        sends_wait_for_receiver: a large zero-copy send completes only once the receiver
            has posted its receive (MPI's rendezvous), not when the bytes have left.
    """

    name = ""
    max_tag = 2**32 - 1
    sends_wait_for_receiver = False

    def __init__(self, rank: int, size: int, comm_id: int) -> None:
        self.rank = rank
        self.size = size
        self.comm_id = comm_id
        # The running operation (name, sequence number), set by the communicator; formatted
        # only when an error needs it (an f-string per operation costs more than the op's
        # bookkeeping).
        self.op: tuple[str, int] | None = None
        # The peer the running operation last waited for (the stall warning names it).
        self.waiting_for: int | None = None
        self.aborted = False  # set by abort(): every wait raises CommClosedError
        self.abort_reason = ""

    def abort(self, reason: str = "") -> None:
        """Make every wait in progress or to come raise :class:`CommClosedError` at its next
        wake-up (within 0.2 s), without releasing anything (:meth:`close` does that).
        ``reason`` goes into that error."""
        self.abort_reason = reason
        self.aborted = True

    def retract(self) -> None:  # noqa: B027 (a transport whose sends all copy has nothing to do)
        """After an operation failed, before its error reaches the caller: make sure no send
        of it reads the caller's memory any more, so a peer receives a buffer's bytes as
        they were when the operation started, or fails. The communicator is unusable
        afterwards anyway."""

    def closed_error(self) -> CommClosedError:
        """What a wait raises once the transport was closed or aborted."""
        how = "aborted" if self.aborted else "closed"
        if self.aborted and self.abort_reason:
            how += f" ({self.abort_reason})"
        return CommClosedError(f"{self.current_op} on rank {self.rank}: the communicator was {how}")

    @property
    def current_op(self) -> str:
        """The running operation for error messages, e.g. ``all_reduce #12``."""
        return "operation" if self.op is None else f"{self.op[0]} #{self.op[1]}"

    @abc.abstractmethod
    def send(
        self,
        dst: int,
        tag: Tag,
        payload: np.ndarray,
        *,
        copy: bool = False,
        one_way: bool = False,
    ) -> None:
        """Send ``payload`` to rank ``dst``. The memory must stay unchanged until :meth:`flush`
        unless ``copy`` is true; a copied send is never waited for. ``one_way``: a hint
        that in this operation data flows only from this rank to ``dst`` (a broadcast), so
        both ends can spend time on the transfer (the shared-memory transport then copies
        through its slots rather than let the receiver read this process's memory)."""

    @abc.abstractmethod
    def flush(self, deadline: float) -> None:
        """Wait until no send still reads the caller's memory."""

    @abc.abstractmethod
    def recv(self, src: int, tag: Tag, nbytes: int, deadline: float) -> Any:
        """Return the payload of the message from ``src`` with ``tag`` (a buffer object that
        stays valid after later receives).

        Raises:
            CommTimeoutError: no such message before ``deadline`` (``time.monotonic()``).
            TransportError: it arrived with a byte count other than ``nbytes``.
        """

    def recv_into(self, src: int, tag: Tag, out: np.ndarray, deadline: float) -> None:
        """Receive the message from ``src`` with ``tag`` into the contiguous array ``out``."""
        np.copyto(out, np.frombuffer(self.recv(src, tag, out.nbytes, deadline), out.dtype))

    def recv_reduce(
        self,
        src: int,
        tag: Tag,
        out: np.ndarray,
        reduce: Callable[[np.ndarray, np.ndarray], None],
        deadline: float,
    ) -> None:
        """``reduce(out, payload)`` with the message from ``src``; transports that can do so
        reduce straight out of where the message arrived."""
        reduce(out, np.frombuffer(self.recv(src, tag, out.nbytes, deadline), out.dtype))

    def probe_p2p(self, tag: int, deadline: float) -> int:
        """Wait for a point-to-point message with user tag ``tag`` from any rank and return
        that rank (the next message with that tag from it is then this one); raise
        :class:`CommTimeoutError` past ``deadline``."""
        raise TransportError(f"the {self.name} transport cannot receive from any source")

    def any_source_timeout(self, tag: int) -> CommTimeoutError:
        """The error for a receive from any source that missed its deadline."""
        return CommTimeoutError(
            f"{self.current_op} timed out on rank {self.rank} waiting for a message with "
            f"tag {tag} from any rank; set the limit with timeout= or RINGCOMM_TIMEOUT_SECONDS"
        )

    @abc.abstractmethod
    def close(self) -> None:
        """Close the transport; a receive blocked in another thread fails soon after."""

    def split(
        self,
        color: int | None,
        key: int,
        new_rank: int,
        addresses: Sequence[bytes],
        comm_id: int,
        endpoint: Endpoint | None,
    ) -> Transport | None:
        """The transport of this rank's part of a split (every rank calls it, members or not).

        ``endpoint`` is the one this rank bound for the split and ``addresses`` are the
        members' endpoint addresses in new rank order; None where this rank joins none.
        """
        if endpoint is None:
            return None
        return endpoint.connect(new_rank, addresses, comm_id)

    def timeout_error(self, src: int, tag: Tag) -> CommTimeoutError:
        """The error for a receive from ``src`` that missed its deadline."""
        return CommTimeoutError(
            f"{self.current_op} timed out on rank {self.rank} waiting for rank {src} "
            f"(step {tag.step}, segment {tag.segment}); set the limit with timeout= "
            "or RINGCOMM_TIMEOUT_SECONDS"
        )

    def size_error(self, src: int, tag: Tag, expected: int, got: int) -> TransportError:
        """The error for a message from ``src`` whose byte count is not the expected one."""
        return TransportError(
            f"{self.current_op}: rank {self.rank} expected {expected} bytes from rank {src} "
            f"(step {tag.step}, segment {tag.segment}) but got {got}; do all ranks pass "
            "the same count and dtype?"
        )


class Unmatched:
    """Bytes of messages that arrived before any receive asked for them (a transport's
    stash), held under a limit: past it, the operation that takes in one more message fails
    with a :class:`TransportError` naming the peer and tag that hold the most, instead of
    memory growing without bound (a receive that is never posted, or ranks that call
    different operations). 0: no limit."""

    __slots__ = ("limit", "nbytes")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nbytes = 0

    def add(self, nbytes: int, transport: Transport) -> None:
        self.nbytes += nbytes
        if self.limit and self.nbytes > self.limit:
            raise self._error(transport)

    def taken(self, nbytes: int) -> None:
        self.nbytes -= nbytes

    def _error(self, transport: Transport) -> TransportError:
        stash: dict[tuple[int, Tag], Any] = transport._stash  # type: ignore[attr-defined]
        held: collections.Counter[tuple[int, int, int]] = collections.Counter()
        for (src, tag), queue in stash.items():
            # Group by peer and by operation (p2p: by user tag), not by segment.
            group = (src, tag.kind, tag.step if tag.kind == KIND_P2P else tag.seq)
            held[group] += sum(memoryview(m).nbytes for m in queue)
        (src, kind, which), most = held.most_common(1)[0]
        what = f"p2p messages with tag {which}" if kind == KIND_P2P else f"operation #{which}"
        return TransportError(
            f"{transport.current_op}: rank {transport.rank} holds {self.nbytes} bytes of "
            f"messages no receive has asked for, over the limit of {self.limit} "
            f"(RINGCOMM_UNMATCHED_BYTES); the most, {most} bytes, are rank {src}'s {what}. "
            "Is a recv missing, or do ranks call different operations?"
        )


class FramedTransport(Transport):
    """A transport of whole messages with headers: matching by tag through a stash."""

    def __init__(
        self,
        rank: int,
        size: int,
        comm_id: int,
        zero_copy_bytes: int,
        window_bytes: int | None = None,
        unmatched_bytes: int = 0,
    ) -> None:
        super().__init__(rank, size, comm_id)
        self.zero_copy_bytes = zero_copy_bytes
        self._stash: dict[tuple[int, Tag], collections.deque[Any]] = collections.defaultdict(
            collections.deque
        )
        self._unmatched = Unmatched(unmatched_bytes)
        self._pending_sends: list[Any] = []
        self._closed = False
        # Flow control (None: off): bytes in flight to each peer, sends waiting for credit,
        # bytes taken from each peer since the last credit we returned.
        self._window = window_bytes
        self._in_flight = [0] * size
        self._waiting: dict[int, collections.deque[tuple[bytes, np.ndarray, bool, int]]] = {}
        self._taken = [0] * size

    # -- what a concrete transport provides -------------------------------------------------
    @abc.abstractmethod
    def _send_frames(self, dst: int, header: bytes, payload: np.ndarray, copy: bool) -> Any:
        """Queue one message; return a handle to wait on when sent without copying, or None."""

    @abc.abstractmethod
    def _wait_sent(self, handles: list[Any], deadline: float) -> None:
        """Block until zero-copy sends no longer reference their memory."""

    @abc.abstractmethod
    def _recv_frames(self, timeout: float) -> tuple[bytes, Any] | None:
        """Return the next incoming ``(header, payload)``, or None after ``timeout`` seconds.

        The payload supports the buffer protocol and may be read-only.
        """

    @abc.abstractmethod
    def _close(self) -> None:
        """Release sockets / queues."""

    def _check_peer(self, src: int) -> None:
        """Raise :class:`PeerLostError` if ``src``, whose message is awaited, is known to
        be gone (a transport that cannot tell leaves it to the timeout)."""
        return

    # -- the interface the algorithms use ---------------------------------------------------
    def send(
        self,
        dst: int,
        tag: Tag,
        payload: np.ndarray,
        *,
        copy: bool = False,
        one_way: bool = False,
    ) -> None:
        """See :meth:`Transport.send`; payloads under ``zero_copy_bytes`` are always copied."""
        if self._closed:
            raise CommClosedError("the communicator is closed")
        nbytes = payload.nbytes
        header = HEADER.pack(
            MAGIC,
            VERSION,
            tag.kind,
            self.comm_id,
            tag.seq,
            tag.step,
            tag.segment,
            nbytes,
            self.rank,
        )
        if dst == self.rank:
            self._stash[(dst, tag)].append(payload.tobytes())
            self._unmatched.add(nbytes, self)
            return
        copy = copy or nbytes < self.zero_copy_bytes
        if (
            self._window is not None
            and tag.kind == KIND_COLLECTIVE
            and not (copy and nbytes <= UNMETERED_BYTES)
        ):
            in_flight = self._in_flight[dst]
            if dst in self._waiting or (in_flight and in_flight + nbytes > self._window):
                kept = payload.copy() if copy else payload  # a copied send is never waited for
                self._waiting.setdefault(dst, collections.deque()).append(
                    (header, kept, copy, nbytes)
                )
                return
            self._in_flight[dst] = in_flight + nbytes
        handle = self._send_frames(dst, header, payload, copy)
        if handle is not None:
            self._pending_sends.append(handle)

    def flush(self, deadline: float) -> None:
        """See :meth:`Transport.flush`: sends waiting for credit go out first."""
        while self._waiting:
            self._receive_one(deadline, min(self._waiting), self.credit_timeout)
        if self._pending_sends:
            # Kept until all are sent: a failed operation's retract() must find them.
            self._wait_sent(self._pending_sends, deadline)
            self._pending_sends = []

    def recv(self, src: int, tag: Tag, nbytes: int, deadline: float) -> Any:
        """See :meth:`Transport.recv`."""
        key = (src, tag)
        queue = self._stash.get(key)
        while not queue:
            self._receive_one(deadline, src, lambda: self.timeout_error(src, tag))
            queue = self._stash.get(key)
        payload = queue.popleft()
        if not queue:
            del self._stash[key]
        got = memoryview(payload).nbytes
        self._unmatched.taken(got)
        if got != nbytes:
            raise self.size_error(src, tag, nbytes, got)
        if self._window is not None and tag.kind == KIND_COLLECTIVE and src != self.rank:
            self._took(src, got)
        return payload

    def stashed_p2p_source(self, tag: int) -> int | None:
        """A rank whose point-to-point message with user tag ``tag`` has arrived, if any."""
        want = Tag(KIND_P2P, 0, tag, 0)
        for (src, got), queue in self._stash.items():
            if got == want and queue:
                return src
        return None

    def probe_p2p(self, tag: int, deadline: float) -> int:
        """See :meth:`Transport.probe_p2p`."""
        while (src := self.stashed_p2p_source(tag)) is None:
            self._receive_one(deadline, self.rank, lambda: self.any_source_timeout(tag))
        return src

    def _receive_one(
        self, deadline: float, src: int, timeout_error: Callable[[], Exception]
    ) -> None:
        """Take one incoming message (waiting up to WAKE_SECONDS for it) and file it; raise
        when closed, aborted, past ``deadline``, or when ``src`` is known to be lost."""
        if self._closed or self.aborted:
            raise self.closed_error()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timeout_error()
        message = self._recv_frames(min(remaining, WAKE_SECONDS))
        if message is not None:
            self._file(*message)
        else:  # nothing for a while: is the peer still there?
            self._check_peer(src)

    def _took(self, src: int, nbytes: int) -> None:
        """The algorithm took ``nbytes`` from ``src``: return credit every half window."""
        assert self._window is not None
        taken = self._taken[src] + nbytes
        if taken >= self._window // 2:
            header = HEADER.pack(
                MAGIC, VERSION, KIND_CREDIT, self.comm_id, taken, 0, 0, 0, self.rank
            )
            self._send_frames(src, header, _NO_PAYLOAD, True)
            taken = 0
        self._taken[src] = taken

    def _credit(self, src: int, nbytes: int) -> None:
        """``src`` took ``nbytes`` of what we sent: send what now fits its window."""
        assert self._window is not None
        in_flight = max(0, self._in_flight[src] - nbytes)
        waiting = self._waiting.get(src)
        while waiting:
            header, payload, copy, size = waiting[0]
            if in_flight and in_flight + size > self._window:
                break
            waiting.popleft()
            in_flight += size
            handle = self._send_frames(src, header, payload, copy)
            if handle is not None:
                self._pending_sends.append(handle)
        if waiting is not None and not waiting:
            del self._waiting[src]
        self._in_flight[src] = in_flight

    def retract(self) -> None:
        """See :meth:`Transport.retract`: sends waiting for credit are dropped; zero-copy
        sends still in the transport's hands are revoked (:meth:`_revoke`)."""
        self._waiting.clear()
        if self._pending_sends:
            handles, self._pending_sends = self._pending_sends, []
            self._revoke(handles)

    def _revoke(self, handles: list[Any]) -> None:
        """Make sure the zero-copy sends behind ``handles`` no longer read the caller's
        memory, at any cost to the connections (a transport that copies has none)."""
        return

    @property
    def sends_waiting(self) -> bool:
        """Whether sends wait for credit (they go out as incoming messages are filed)."""
        return bool(self._waiting)

    def progress(self) -> None:
        """File whatever has arrived, without waiting: credits let waiting sends go. For a
        transport that waits on something else meanwhile (the shared-memory transport for
        its peers on this host)."""
        while (message := self._recv_frames(0)) is not None:
            self._file(*message)

    def credit_timeout(self) -> CommTimeoutError:
        """The error of a wait for credit that ran out of time."""
        stuck = sorted(self._waiting)
        return CommTimeoutError(
            f"{self.current_op} timed out on rank {self.rank}: rank(s) {stuck} did not take "
            "the data sent to them (is a peer stuck?); set the limit with timeout= or "
            "RINGCOMM_TIMEOUT_SECONDS"
        )

    def close(self) -> None:
        """See :meth:`Transport.close`."""
        if not self._closed:
            self._closed = True
            self._stash.clear()
            self._unmatched.taken(self._unmatched.nbytes)
            self._close()

    # -- internals --------------------------------------------------------------------------
    def _file(self, header: bytes, payload: Any) -> None:
        """Check an incoming message and stash it under its tag; drop (and log) anything bad."""
        if len(header) != HEADER.size:
            log.warning("rank %d: dropped a message with a %d-byte header", self.rank, len(header))
            return
        magic, version, kind, comm_id, seq, step, segment, nbytes, src = HEADER.unpack(header)
        if kind == KIND_CREDIT and magic == MAGIC and comm_id == self.comm_id and src < self.size:
            if self._window is not None:
                self._credit(src, seq)
            return
        if magic != MAGIC or version != VERSION:
            log.warning("rank %d: dropped a message with bad magic/version", self.rank)
        elif comm_id != self.comm_id:
            log.warning("rank %d: dropped a message for communicator %x", self.rank, comm_id)
        elif src >= self.size or kind not in (KIND_COLLECTIVE, KIND_P2P):
            log.warning("rank %d: dropped a message claiming src %d kind %d", self.rank, src, kind)
        elif memoryview(payload).nbytes != nbytes:
            log.warning("rank %d: dropped a truncated message from rank %d", self.rank, src)
        else:
            self._stash[(src, Tag(kind, seq, step, segment))].append(payload)
            self._unmatched.add(nbytes, self)
