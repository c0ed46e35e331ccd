"""The slot protocol: how ranks of one host move messages through their segments
(:mod:`~ringcomm.transport.shm.segment`), with ZeroMQ sockets for every other pair.

Each rank of a communicator owns one segment under ``/dev/shm``: a control page and one
inbox per peer on its host. An inbox is a ring of ``shm_slots`` slots of
``shm_slot_bytes``; the sender copies a record (a header and up to a slot of payload)
into the next free slot and bumps the inbox's ``head``; the receiver reduces or copies
straight out of the slot, then bumps ``tail`` to free it. Both counters live in the
segment and are read and written with acquire/release ordering (:mod:`ringcomm.native.shm`),
so a slot is never overwritten while it is read (flow control) and never read before it
is written. A message larger than a slot spans several records; a receiver working on
record k lets the sender fill record k+1, so copy-in and reduce overlap.

A large segment the sender keeps unchanged until the operation ends goes "by address": one
record holding where it lies in the sender's memory, which the receiver reads itself
(``process_vm_readv``): one copy instead of two. Each rank probes at connect whether it may
read each peer; where not (containers), everything goes through the slots.

A send whose slots are not free yet is queued and pushed while this rank waits for
anything else (and, for a send nobody waits for, by a background ticker), so two ranks
that both send before they receive never block each other.

Waiting: poll briefly, spin (yielding the core) for ``SPIN_SECONDS``, then sleep on a
futex in the waiter's control page; peers wake it after they publish a record or free a
slot. Sleeps last at most ``_CHECK_SECONDS``, after which the waiter checks its peers'
processes (pidfd): a peer that exited raises :class:`PeerLostError` naming it.

No leaks: segments are created, fully allocated (``posix_fallocate``: a full /dev/shm
fails here with a clear error, not later with SIGBUS; where /dev/shm is short a rank
tries smaller slots first, and peers read each segment's layout from it), opened by
every peer and then
unlinked before the first operation, so the kernel frees them whenever the processes
end, kill -9 included. Only a rank killed during connect can leave a name behind;
names carry ``RINGCOMM_JOB_ID`` and ``ringcomm-run`` removes its job's names at exit.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ringcomm.config import Config
from ringcomm.errors import (
    CommClosedError,
    CommTimeoutError,
    PeerLostError,
    TransportError,
)
from ringcomm.logs import get_logger
from ringcomm.native import shm as native_shm
from ringcomm.transport.base import KIND_P2P, FramedTransport, Tag, Transport, Unmatched
from ringcomm.transport.shm import syscalls
from ringcomm.transport.shm.segment import (
    ATTACHED,
    ATTACHED_CMA,
    BY_ADDRESS,
    C_ATTACHED,
    C_BELL,
    C_CLOSED,
    C_PID,
    C_RETRACTED,
    C_SLEEPING,
    HEAD,
    INLINE,
    MESSAGE_BYTES_WORD,
    RECORD,
    TAG_WORDS,
    TAIL,
    Inbox,
    Segment,
    can_read,
    create_segment,
    open_segment,
    segment_path,
    wake_owner,
)

if TYPE_CHECKING:
    from ringcomm.transport.shm.board import Board

log = get_logger(__name__)

# A peer that closed is reported lost only after this long, so what it published just
# before is taken first (a waiter looks at its inbox between checks).
CLOSED_GRACE_SECONDS = 0.2
# Polls before the spin starts yielding the core (~0.2 us each: about 20 us).
POLLS = 100
# Spin before sleeping. Measured with bench/collectives.py all_reduce -b 4K -e 16M -f 16
# on 2 cores: see docs/transports.md.
SPIN_SECONDS = 0.002
CHECK_SECONDS = 0.1  # longest futex sleep: how often a waiter checks that peers live
TICK_SECONDS = 0.0005  # how often queued sends nobody waits for are pushed


class Peer:
    """A rank on this host: its segment, our inbox in it (we send) and its inbox in ours."""

    def __init__(self, rank: int, segment: Segment, outbox: Inbox, inbox: Inbox) -> None:
        self.rank = rank
        self.segment = segment
        self.pid = int(segment.control[C_PID])
        self.outbox = outbox
        self.inbox = inbox
        self.head = 0  # records we published into outbox
        self.tail_seen = 0  # outbox records the peer has freed, as last read
        self.tail = 0  # inbox records we consumed
        self.head_seen = 0  # inbox records the peer had published, as last read
        self.lent_until = 0  # the peer reads our memory until it frees this many records
        self.by_address = False  # the peer can read our memory (set once it attached)
        self.closed_since = 0.0  # when we first saw the peer's closed flag
        self.queue: collections.deque[Queued] = collections.deque()
        self.pidfd = syscalls.open_pidfd(self.pid)

    def alive(self) -> bool:
        return syscalls.process_alive(self.pid, self.pidfd)


class Queued:
    """A message (or what is left of it) waiting for free slots."""

    __slots__ = ("borrowed", "by_address", "data", "offset", "tag")

    def __init__(
        self, tag: Tag, data: np.ndarray, offset: int, borrowed: bool, by_address: bool
    ) -> None:
        self.tag = tag
        self.data = data  # uint8
        self.offset = offset  # bytes written so far
        self.borrowed = borrowed  # reads the caller's memory: flush() waits for it
        self.by_address = by_address  # goes as one record the receiver reads us by


class ShmTransport(Transport):
    """Shared-memory inboxes with the ranks of this host; ZeroMQ (``sockets``) for others."""

    sends_wait_for_receiver = True  # a send waits for free slots, so p2p sends copy

    def __init__(
        self,
        rank: int,
        size: int,
        comm_id: int,
        config: Config,
        local: list[int],
        sockets: FramedTransport | None,
    ) -> None:
        super().__init__(rank, size, comm_id)
        self.name = "shm+zmq" if sockets is not None else "shm"
        self._config = config
        self._sockets = sockets
        self._lock = threading.Lock()  # queues and outboxes: the op thread and the ticker
        self._closed = False
        self._stash: dict[tuple[int, Tag], collections.deque[np.ndarray]] = collections.defaultdict(
            collections.deque
        )
        self._unmatched = Unmatched(config.unmatched_bytes)
        self._by_address_bytes = config.shm_by_address_bytes or sys.maxsize
        self._borrowed = 0  # queued sends that still read the caller's memory
        self._records_out = 0  # records written so far: progress, for _wait
        self._scratch: np.ndarray | None = None  # where data read by address is reduced from
        self._detached = 0  # queued copied sends
        self._ticker_error: TransportError | None = None  # see tick()
        others = [r for r in local if r != rank]
        # Polls before a wait yields the core: decided once the peers are known (connect).
        self.polls = 0
        self._path = segment_path(config.job_id, comm_id, rank)
        self._segment: Segment | None = create_segment(self._path, size, len(others), config)
        self._layout = self._segment.layout  # of our inboxes; a peer's may differ
        self._peers: dict[int, Peer] = {}
        self.job_id = config.job_id
        # The board of the direct collectives (ringcomm.algorithms.direct), made on first
        # use; only where every rank of the communicator is on this host.
        self.board: Board | None = None
        self.board_area_bytes = config.shm_board_bytes
        self.board_native = config.shm_board_native
        self.board_shared_cache = config.shm_board_shared_cache  # None: probe it
        self.board_area_copies = config.shm_board_area_copies  # None: probe it (or follow)
        self.board_stream_bytes = config.shm_board_stream_bytes  # None: by the cache
        # data on the board read where it lies from this size up (rank 0's, for every rank;
        # see Board.by_address_bytes); never where reading by address is off altogether
        self.board_by_address_bytes = (
            config.shm_board_by_address_bytes
            if config.shm_board_by_address_bytes and config.shm_by_address_bytes
            else sys.maxsize
        )
        self.board_possible = sockets is None and config.shm_board_bytes > 0
        try:
            self._attach(others, time.monotonic() + config.timeout_seconds)
        except BaseException:
            self.close()
            raise

    # -- connect -----------------------------------------------------------------------------
    def _attach(self, others: list[int], deadline: float) -> None:
        """Open every peer's segment, mark ourselves attached in it, wait until every peer
        has attached to ours, then unlink ours: from here on nothing can leak."""
        assert self._segment is not None
        index = {r: i for i, r in enumerate(others)}  # our inbox from rank r
        job = self._config.job_id
        waiting = set(others)
        while waiting:
            for r in sorted(waiting):
                seg = open_segment(segment_path(job, self.comm_id, r), self.size, len(others))
                if seg is None:
                    continue
                # In r's segment, our inbox index is our position among r's peers.
                ours_there = sorted([*others, self.rank])
                ours_there.remove(r)
                outbox = seg.inbox(ours_there.index(self.rank))
                self._peers[r] = Peer(r, seg, outbox, self._segment.inbox(index[r]))
                peer = self._peers[r]
                readable = can_read(peer.pid, seg)
                mark = ATTACHED_CMA if readable else ATTACHED
                native_shm.store_release(seg.control, C_ATTACHED + self.rank, mark)
                waiting.discard(r)
            if waiting:
                self._check_time(deadline, f"rank(s) {sorted(waiting)} to create their segment")
                time.sleep(0.001)
        control = self._segment.control
        while not all(native_shm.load_acquire(control, C_ATTACHED + r) for r in others):
            late = [r for r in others if not control[C_ATTACHED + r]]
            self._check_time(deadline, f"rank(s) {late} to open this rank's segment")
            self._check_peers()
            time.sleep(0.001)
        os.unlink(self._path)
        self._path = ""
        for r, peer in self._peers.items():
            peer.by_address = int(control[C_ATTACHED + r]) == ATTACHED_CMA
        # With more ranks on this host than cores, a poll that keeps the core holds off the
        # very rank it waits for: yield at once (n=4 on 2 cores, 4 KiB all_reduce on the
        # board: 170 us with the polls, 85 without).
        self.polls = POLLS if len(self._peers) + 1 <= self._cores_of_ranks() else 0

    def _cores_of_ranks(self) -> int:
        """How many cores the ranks of this host may run on, together: a launcher that
        binds each rank to a core of its own (Open MPI's default for 2 ranks, srun's
        --cpu-bind) leaves each process one core, and that is no oversubscription."""
        cores = set(os.sched_getaffinity(0))
        for peer in self._peers.values():
            with contextlib.suppress(OSError):  # (gone: noticed where it is waited for)
                cores |= os.sched_getaffinity(peer.pid)
        return len(cores)

    def readable_by_all(self) -> bool:
        """Whether every peer may read this process's memory (``process_vm_readv``)."""
        return all(p.by_address for p in self._peers.values())

    @property
    def by_address_bytes(self) -> int:
        """Messages this large go by address (``RINGCOMM_SHM_BY_ADDRESS_BYTES``)."""
        return self._by_address_bytes

    def peer_pid(self, rank: int) -> int:
        """The process id of ``rank`` (on this host)."""
        return self._peers[rank].pid

    def peer_segment(self, rank: int) -> Segment:
        """The segment of ``rank`` (on this host): ringing its bell wakes it."""
        return self._peers[rank].segment

    def _check_time(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise CommTimeoutError(
                f"shared memory: rank {self.rank} timed out waiting for {what} "
                "(did a rank die while connecting?)"
            )

    # -- sending -----------------------------------------------------------------------------
    def send(
        self,
        dst: int,
        tag: Tag,
        payload: np.ndarray,
        *,
        copy: bool = False,
        one_way: bool = False,
    ) -> None:
        """See :meth:`Transport.send`. Large sends from the caller's memory go by address
        (the receiver reads them: one copy), unless ``one_way``: then the sender has time to
        copy into the slots while the receiver copies out, two copies in parallel, faster
        than one read of another process's memory (``process_vm_readv`` runs at half the
        speed of memcpy here)."""
        if self._closed:
            raise CommClosedError("the communicator is closed")
        if self._ticker_error is not None:
            self._check_ticker()
        peer = self._peers.get(dst)
        if peer is None:
            if dst == self.rank:
                self._stash[(dst, tag)].append(payload.reshape(-1).view(np.uint8).copy())
                self._unmatched.add(payload.nbytes, self)
            else:
                assert self._sockets is not None
                self._sockets.send(dst, tag, payload, copy=copy)
            return
        data = (payload if payload.ndim == 1 else payload.reshape(-1)).view(np.uint8)
        # Borrowed sends of at least Config.shm_by_address_bytes go by address where the receiver
        # can read us. Measured with bench/collectives.py, 16 and 64 MiB at n=2 (MPICH's busbw = 1):
        # all_gather 0.24-0.70 through the slots, 0.81-0.99 by address; broadcast 0.63-0.93 and
        # 0.74-0.97; all_reduce 2.2-2.3 and 2.6-2.7. process_vm_readv alone copies 3.7-5.6 GB/s
        # here against 12 GB/s for memcpy, but one copy beats two.
        by_address = (
            not copy and not one_way and peer.by_address and data.nbytes >= self._by_address_bytes
        )
        with self._lock:
            offset: int | None = 0
            if not peer.queue:
                offset = self._push(peer, tag, data, 0, by_address)
                if offset is None:
                    return
            item = Queued(tag, data.copy() if copy else data, offset, not copy, by_address)
            if copy:
                self._detached += 1
                _ticker.watch(self)
            else:
                self._borrowed += 1
            peer.queue.append(item)

    def _push(
        self, peer: Peer, tag: Tag, data: np.ndarray, offset: int, by_address: bool
    ) -> int | None:
        """Write records of ``data[offset:]`` into free slots of the peer's inbox; return
        None once the whole message is written, else the offset to go on from. Caller
        holds the lock."""
        lay = peer.segment.layout  # the receiver's slots
        total = data.nbytes
        outbox = peer.outbox
        done: int | None = offset
        wrote = False
        while done is not None:
            if peer.head - peer.tail_seen >= lay.slots:
                peer.tail_seen = native_shm.load_acquire(outbox.counters, TAIL)
                if peer.head - peer.tail_seen >= lay.slots:
                    break
            i = peer.head % lay.slots
            if by_address:  # one record for the whole message: where the peer reads it
                n = total
                outbox.payloads[i][:8].view(np.uint64)[0] = syscalls.address_of(data)
                flags = BY_ADDRESS
            else:
                n = min(lay.slot_bytes, total - offset)
                if n:
                    outbox.payloads[i][:n] = data if n == total else data[offset : offset + n]
                flags = INLINE
            RECORD.pack_into(outbox.mm, outbox.header_at[i], *tag, total, offset, n, flags)
            peer.head += 1
            native_shm.store_fenced(outbox.counters, HEAD, peer.head)
            wrote = True
            self._records_out += 1
            offset += n
            done = None if offset >= total else offset
        if wrote:
            wake_owner(peer.segment)
            if by_address and done is None:
                peer.lent_until = peer.head
        return done

    @property
    def _queued(self) -> bool:
        """Whether any send waits for free slots."""
        return bool(self._borrowed or self._detached)

    def _lent(self) -> bool:
        """Whether a peer may still read our memory by address (for :meth:`flush`)."""
        for peer in self._peers.values():
            if peer.lent_until > peer.tail_seen:
                peer.tail_seen = native_shm.load_acquire(peer.outbox.counters, TAIL)
                if peer.lent_until > peer.tail_seen:
                    return True
        return False

    def _push_queued(self) -> bool:
        """Push queued records into free slots; True when nothing is queued any more."""
        empty = True
        with self._lock:
            for peer in self._peers.values():
                q = peer.queue
                while q:
                    item = q[0]
                    offset = self._push(peer, item.tag, item.data, item.offset, item.by_address)
                    if offset is not None:
                        item.offset = offset
                        break
                    q.popleft()
                    if item.borrowed:
                        self._borrowed -= 1
                    else:
                        self._detached -= 1
                empty = empty and not q
        return empty

    def flush(self, deadline: float) -> None:
        if self._ticker_error is not None:
            self._check_ticker()
        sockets = self._sockets
        if sockets is not None:
            if sockets.sends_waiting:  # credits come over the sockets; our queues move meanwhile
                self._wait(lambda: not sockets.sends_waiting, deadline, sockets.credit_timeout)
            sockets.flush(deadline)
        if self._borrowed or self._lent():
            self._wait(
                lambda: self._borrowed == 0 and not self._lent(), deadline, self._send_timeout
            )

    def _send_timeout(self) -> CommTimeoutError:
        stuck = [
            p.rank
            for p in self._peers.values()
            if p.lent_until > p.tail_seen or any(q.borrowed for q in p.queue)
        ]
        return CommTimeoutError(
            f"{self.current_op} timed out on rank {self.rank}: rank(s) {stuck} did not take "
            "the data sent to them (is a peer stuck?); set the limit with timeout= or "
            "RINGCOMM_TIMEOUT_SECONDS"
        )

    # -- receiving ---------------------------------------------------------------------------
    def recv(self, src: int, tag: Tag, nbytes: int, deadline: float) -> Any:
        out = np.empty(nbytes, np.uint8)
        self.recv_into(src, tag, out, deadline)
        return out

    def recv_into(self, src: int, tag: Tag, out: np.ndarray, deadline: float) -> None:
        target = (out if out.ndim == 1 else out.reshape(-1)).view(np.uint8)

        def land(offset: int, chunk: np.ndarray) -> None:
            target[offset : offset + chunk.nbytes] = chunk

        self._receive(src, tag, out.nbytes, deadline, land, target)

    def recv_reduce(
        self,
        src: int,
        tag: Tag,
        out: np.ndarray,
        reduce: Callable[[np.ndarray, np.ndarray], None],
        deadline: float,
    ) -> None:
        """Reduce the message into ``out`` straight out of the slots, record by record."""
        itemsize = out.itemsize
        flat = out if out.ndim == 1 else out.reshape(-1)

        def land(offset: int, chunk: np.ndarray) -> None:
            a = offset // itemsize
            reduce(flat[a : a + chunk.nbytes // itemsize], chunk.view(out.dtype))

        self._receive(src, tag, out.nbytes, deadline, land, None)

    def _receive(
        self,
        src: int,
        tag: Tag,
        nbytes: int,
        deadline: float,
        land: Callable[[int, np.ndarray], None],
        into: np.ndarray | None,
    ) -> None:
        """Hand the message to ``land(offset, bytes)`` piece by piece, or, where ``into``
        (uint8, the message's size) is given, let messages sent by address land there."""
        if self._closed:
            raise CommClosedError(f"{self.current_op}: the communicator was closed")
        if self._ticker_error is not None:
            self._check_ticker()
        stashed = self._stash.get((src, tag)) if self._stash else None
        if stashed:
            data = stashed.popleft()
            if not stashed:
                del self._stash[(src, tag)]
            self._unmatched.taken(data.nbytes)
            if data.nbytes != nbytes:
                raise self.size_error(src, tag, nbytes, data.nbytes)
            land(0, data)
            return
        peer = self._peers.get(src)
        if peer is None:
            if src == self.rank:
                raise self.timeout_error(src, tag)  # a send to oneself comes before its recv
            self._recv_socket(src, tag, nbytes, deadline, land, into)
            return
        while True:
            header = self._next_record(peer, tag, deadline)
            total = header[MESSAGE_BYTES_WORD]
            if header[:TAG_WORDS] == tag:
                break
            key = Tag(*header[:TAG_WORDS])
            self._stash[(src, key)].append(self._take(peer, key, total, deadline, header))
            self._unmatched.add(total, self)
        if total != nbytes:
            self._take(peer, tag, total, deadline, header)  # keep the inbox in step
            raise self.size_error(src, tag, nbytes, total)
        self._consume(peer, tag, total, deadline, land, into, header)

    def probe_p2p(self, tag: int, deadline: float) -> int:
        """See :meth:`Transport.probe_p2p`. Records ahead of the message in a peer's inbox
        are stashed, as a receive from that peer would; ranks on other hosts are looked at
        every millisecond (their sockets do not ring our futex)."""
        want = Tag(KIND_P2P, 0, tag, 0)
        while True:
            src = self._probe_once(want, deadline)
            if src is not None:
                return src
            now = time.monotonic()
            if now >= deadline:
                raise self.any_source_timeout(tag)
            nap = 0.001 if self._sockets is not None else CHECK_SECONDS
            with contextlib.suppress(CommTimeoutError):
                self._wait(self._any_record, min(deadline, now + nap), self._probe_timeout)

    def _probe_once(self, want: Tag, deadline: float) -> int | None:
        for (src, got), queue in self._stash.items():
            if got == want and queue:
                return src
        for src, peer in self._peers.items():
            while self._any_record_from(peer):
                header = self._next_record(peer, want, deadline)
                if header[:TAG_WORDS] == want:
                    return src
                key, total = Tag(*header[:TAG_WORDS]), header[MESSAGE_BYTES_WORD]
                self._stash[(src, key)].append(self._take(peer, key, total, deadline, header))
                self._unmatched.add(total, self)
        if self._sockets is not None:
            self._sockets.progress()
            return self._sockets.stashed_p2p_source(want.step)
        return None

    def _any_record_from(self, peer: Peer) -> bool:
        if peer.head_seen <= peer.tail:
            peer.head_seen = native_shm.load_acquire(peer.inbox.counters, HEAD)
        return peer.head_seen > peer.tail

    def _any_record(self) -> bool:
        return any(self._any_record_from(peer) for peer in self._peers.values())

    def _probe_timeout(self) -> CommTimeoutError:
        return CommTimeoutError("(a slice of a wait for any source)")

    def _take(
        self, peer: Peer, tag: Tag, total: int, deadline: float, header: tuple[int, ...]
    ) -> np.ndarray:
        """Copy a whole message out of the inbox (one that is not wanted yet)."""
        data = np.empty(total, np.uint8)

        def land(offset: int, chunk: np.ndarray) -> None:
            data[offset : offset + chunk.nbytes] = chunk

        self._consume(peer, tag, total, deadline, land, data, header)
        return data

    def _consume(
        self,
        peer: Peer,
        tag: Tag,
        total: int,
        deadline: float,
        land: Callable[[int, np.ndarray], None],
        into: np.ndarray | None,
        header: tuple[int, ...],
    ) -> None:
        """Take the message whose first record has ``header``, record by record."""
        lay = self._layout
        done = 0
        while True:
            i = peer.tail % lay.slots
            _, _, _, _, message_bytes, offset, n, flags = header
            inline = flags == INLINE
            if offset != done or message_bytes != total or (inline and n > lay.slot_bytes):
                raise TransportError(
                    f"{self.current_op}: rank {self.rank} got a malformed record from "
                    f"rank {peer.rank} (offset {offset}, expected {done})"
                )
            try:
                if inline:
                    land(offset, peer.inbox.payloads[i][:n])
                else:
                    address = int(peer.inbox.payloads[i][:8].view(np.uint64)[0])
                    self._land_remote(peer, address, offset, n, land, into)
            finally:
                peer.tail += 1
                native_shm.store_fenced(peer.inbox.counters, TAIL, peer.tail)
                # The sender may sleep until a slot is free (or its memory is read).
                if peer.segment.control.item(C_SLEEPING):
                    wake_owner(peer.segment)
            if not inline and self._queued:
                # Between two reads of the peer's memory, hand out the addresses of our own
                # queued sends (cheap), so the peer is not left waiting for them.
                self._push_queued()
            done += n
            if done >= total:
                return
            header = self._next_record(peer, tag, deadline)

    def _land_remote(
        self,
        peer: Peer,
        address: int,
        offset: int,
        n: int,
        land: Callable[[int, np.ndarray], None],
        into: np.ndarray | None,
    ) -> None:
        """Read ``n`` bytes of the sender's memory: straight into ``into`` where given,
        else through a slot-sized scratch, piece by piece into ``land``."""
        try:
            if into is not None:
                syscalls.read_remote(peer.pid, address, into[offset : offset + n])
                self._check_retracted(peer)
                return
            if self._scratch is None:
                self._scratch = np.empty(self._layout.slot_bytes, np.uint8)
            step = self._scratch.nbytes
            for k in range(0, n, step):
                piece = self._scratch[: min(step, n - k)]
                syscalls.read_remote(peer.pid, address + k, piece)
                self._check_retracted(peer)
                land(offset + k, piece)
        except OSError as e:
            if not peer.alive():
                raise PeerLostError(
                    f"{self.current_op}: rank {peer.rank} (pid {peer.pid}, same host) exited "
                    f"while rank {self.rank} read its data"
                ) from None
            raise TransportError(
                f"{self.current_op}: rank {self.rank} cannot read rank {peer.rank}'s data: {e}"
            ) from None

    def _check_retracted(self, peer: Peer) -> None:
        """After reading ``peer``'s memory: if its operation failed meanwhile (it raised, and
        its caller may have changed the buffer), what was read cannot be trusted. The read
        completes before this load and the sender's flag is fenced before it raises, so a
        flag not seen here means the bytes read were the ones sent."""
        if native_shm.load_acquire(peer.segment.control, C_RETRACTED):
            raise TransportError(
                f"{self.current_op}: rank {peer.rank}'s operation failed while rank "
                f"{self.rank} read its data by address; the data may have changed since"
            )

    def retract(self) -> None:
        """See :meth:`Transport.retract`: queued sends that still read the caller's memory
        are dropped, and if peers may still read it by address, the segment says the
        operation failed (C_RETRACTED), so their reads fail instead of delivering bytes
        the caller may have changed."""
        with self._lock:
            for peer in self._peers.values():
                kept = [item for item in peer.queue if not item.borrowed]
                self._borrowed -= len(peer.queue) - len(kept)
                peer.queue.clear()
                peer.queue.extend(kept)
        if self._segment is not None and self._lent():
            native_shm.store_fenced(self._segment.control, C_RETRACTED, 1)
        if self._sockets is not None:
            self._sockets.retract()

    def _next_record(self, peer: Peer, tag: Tag, deadline: float) -> tuple[int, ...]:
        """The header of the next record from ``peer`` (kind, seq, step, segment, message
        bytes, offset, bytes here, flags), once it is there."""
        if peer.head_seen <= peer.tail:
            counters = peer.inbox.counters
            peer.head_seen = native_shm.load_acquire(counters, HEAD)
            if peer.head_seen <= peer.tail:

                def ready() -> bool:
                    peer.head_seen = native_shm.load_acquire(counters, HEAD)
                    return peer.head_seen > peer.tail

                self._wait(ready, deadline, lambda: self.timeout_error(peer.rank, tag))
        inbox = peer.inbox
        return RECORD.unpack_from(inbox.mm, inbox.header_at[peer.tail % self._layout.slots])

    def _recv_socket(
        self,
        src: int,
        tag: Tag,
        nbytes: int,
        deadline: float,
        land: Callable[[int, np.ndarray], None],
        into: np.ndarray | None,
    ) -> None:
        """Receive from a peer on another host; keep our queued shared-memory sends moving
        meanwhile (a peer here may wait for them before it sends what that host waits for)."""
        assert self._sockets is not None
        sockets = self._sockets
        sockets.op = self.op
        while True:
            idle = self._push_queued()
            slice_end = deadline if idle else min(deadline, time.monotonic() + 0.001)
            try:
                if into is not None:
                    sockets.recv_into(src, tag, into, slice_end)
                else:
                    land(0, np.frombuffer(sockets.recv(src, tag, nbytes, slice_end), np.uint8))
                return
            except CommTimeoutError:
                if time.monotonic() >= deadline:
                    raise

    # -- waiting -----------------------------------------------------------------------------
    def _wait(
        self,
        ready: Callable[[], bool],
        deadline: float,
        timeout_error: Callable[[], CommTimeoutError],
    ) -> None:
        """Until ``ready()``: spin (yielding), then sleep on our futex; our queued sends
        keep moving throughout."""
        assert self._segment is not None
        control = self._segment.control
        bell_address = self._segment.bell_address
        queued = self._queued
        if not queued:
            # A peer a few microseconds behind: poll without giving the core away first (a
            # sched_yield costs 0.6 us and delays noticing the record by as much).
            for _ in range(self.polls):
                if ready():
                    return
        now = time.monotonic()
        spin_until = now + SPIN_SECONDS
        check_at = now + CHECK_SECONDS
        records_out = self._records_out
        sockets = self._sockets
        while True:
            if queued:
                queued = not self._push_queued()
            if sockets is not None and sockets.sends_waiting:
                # Sends to other hosts wait for credit, which comes over the sockets, not
                # through our futex: look there too, and sleep in short slices below.
                sockets.progress()
            if ready():
                return
            if self._closed or self.aborted:
                raise self.closed_error()
            now = time.monotonic()
            if now >= deadline:
                raise timeout_error()
            if now >= check_at:
                self._check_peers()
                if self._ticker_error is not None:
                    self._check_ticker()
                check_at = now + CHECK_SECONDS
            if self._records_out != records_out:
                # Our queued sends moved: the peer is draining them now, so keep spinning.
                # (Sleeping between slots turned a 64 MiB broadcast into a futex ping-pong
                # at a quarter of its speed.)
                records_out = self._records_out
                spin_until = now + SPIN_SECONDS
            if now < spin_until:
                os.sched_yield()
                continue
            queued = True  # sleeping from here on: look at every queue each time
            bell = int(control[C_BELL]) & 0xFFFFFFFF
            native_shm.store_fenced(control, C_SLEEPING, 1)
            try:
                # Look again with the flag up: a peer that published (or freed a slot)
                # before it could see the flag is seen here; one after it rings the bell.
                self._push_queued()
                if ready():
                    return
                nap = CHECK_SECONDS if sockets is None or not sockets.sends_waiting else 0.001
                syscalls.futex_wait(bell_address, bell, min(nap, deadline - now))
            finally:
                native_shm.store_release(control, C_SLEEPING, 0)

    def _check_peers(self) -> None:
        now = time.monotonic()
        for peer in self._peers.values():
            if not peer.alive():
                raise PeerLostError(
                    f"{self.current_op}: rank {peer.rank} (pid {peer.pid}, same host) exited "
                    f"while rank {self.rank} was working with it"
                )
            if peer.rank == self.waiting_for and peer.segment.control[C_CLOSED]:
                peer.closed_since = peer.closed_since or now
                if now - peer.closed_since >= CLOSED_GRACE_SECONDS:
                    raise PeerLostError(
                        f"{self.current_op}: rank {peer.rank} closed or aborted its "
                        f"communicator while rank {self.rank} was waiting for it"
                    )

    # -- ticker and lifetime ------------------------------------------------------------------
    def tick(self) -> bool:
        """Push queued sends nobody waits for (the ticker); False once none is left."""
        if self._closed or not self._detached:
            return False
        try:
            self._push_queued()
        except Exception as e:
            # Nobody waits for these sends: keep the error for the next operation on this
            # communicator, which raises it instead of running (see _check_ticker).
            self._ticker_error = TransportError(
                f"rank {self.rank}: pushing a queued send in the background failed: "
                f"{type(e).__name__}: {e}"
            )
            self._ticker_error.__cause__ = e
            log.error("%s", self._ticker_error)
            return False
        return self._detached > 0

    def _check_ticker(self) -> None:
        """Raise what the background ticker failed with, once, in the operation that comes
        next (the sends it pushed belonged to operations that already returned)."""
        error, self._ticker_error = self._ticker_error, None
        if error is not None:
            raise error

    def abort(self, reason: str = "") -> None:
        """See :meth:`Transport.abort`; the socket transport to other hosts too."""
        super().abort(reason)
        if self._sockets is not None:
            self._sockets.abort(reason)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # Let queued sends drain for up to linger_seconds, as ZeroMQ's linger does.
        linger = time.monotonic() + self._config.linger_seconds
        with contextlib.suppress(TransportError):
            while not self._push_queued() and time.monotonic() < linger:
                self._check_peers()
                time.sleep(0.001)
        if self._segment is not None:  # tell peers still waiting for us
            native_shm.store_release(self._segment.control, C_CLOSED, 1)
        if self._sockets is not None:
            self._sockets.close()
        if self._path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = ""
        with self._lock:  # the ticker may be pushing
            peers, self._peers = self._peers, {}
        for peer in peers.values():
            if peer.pidfd is not None:
                os.close(peer.pidfd)
            peer.queue.clear()
            peer.segment.close()
        self._stash.clear()
        self._unmatched.taken(self._unmatched.nbytes)
        if self.board is not None:
            self.board.close()
            self.board = None
        if self._segment is not None:
            self._segment.close()
            self._segment = None


class _Ticker:
    """One daemon thread per process that pushes queued sends nobody waits for (a p2p send
    that returned before its receiver took it) while their communicator is idle. It runs
    only while such sends exist: a thread that wakes on a timer takes the GIL from the
    thread doing the work."""

    def __init__(self) -> None:
        self._transports: set[ShmTransport] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, transport: ShmTransport) -> None:
        """Push ``transport``'s detached sends until none is left."""
        with self._lock:
            self._transports.add(transport)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ringcomm-shm-ticker", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                transports = list(self._transports)
                if not transports:
                    self._thread = None
                    return
            for t in transports:
                if not t.tick():
                    with self._lock:
                        self._transports.discard(t)
            time.sleep(TICK_SECONDS)


_ticker = _Ticker()
