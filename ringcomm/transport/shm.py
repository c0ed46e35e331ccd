"""Shared-memory transport between ranks of one host, ZeroMQ sockets for every other pair.

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
import ctypes
import json
import mmap
import os
import platform
import select
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

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
from ringcomm.transport.base import Endpoint, Tag, Transport
from ringcomm.transport.shm_names import SHM_DIR, job_id, segment_path

log = get_logger(__name__)

_MAGIC = 0x52434D5348  # "RCMSH"
_LAYOUT = 2
_PAGE = 4096
_LINE = 64  # one cache line: counters written by different processes never share one
_RECORD_HEADER = 64
# A record's header: kind, seq, step, segment (the tag), message bytes, offset of this
# record in the message, bytes in this record, flags.
_RECORD = struct.Struct("<8Q")
# Control page (uint64 words): magic, layout version, pid, the address of this page in the
# owner (to probe reading by address), the owner's slots and slot bytes, then the futex
# word and the sleeping flag on their own lines, then one "attached" flag per rank.
_C_MAGIC, _C_LAYOUT, _C_PID, _C_ADDRESS, _C_SLOTS, _C_SLOT_BYTES = 0, 1, 2, 3, 4, 5
_C_CLOSED = 6  # the owner closed (or aborted) its communicator
# A peer that closed is reported lost only after this long, so what it published just
# before is taken first (a waiter looks at its inbox between checks).
_CLOSED_GRACE_SECONDS = 0.2
_C_BELL = _LINE // 8
_C_SLEEPING = 2 * _LINE // 8
_C_ATTACHED = 3 * _LINE // 8
# What a peer writes into "attached": it mapped the segment; and it can also read this
# process's memory directly (cross-memory attach, process_vm_readv).
_ATTACHED, _ATTACHED_CMA = 1, 2
# Record flags: the payload is in the slot, or the slot holds the address of the payload
# in the sender's memory, which the receiver reads itself (one copy instead of two).
_INLINE, _BY_ADDRESS = 0, 1
# Borrowed sends of at least Config.shm_by_address_bytes go by address where the receiver
# can read us. Measured with bench/collectives.py, 16 and 64 MiB at n=2 (MPICH's busbw = 1):
# all_gather 0.24-0.70 through the slots, 0.81-0.99 by address; broadcast 0.63-0.93 and
# 0.74-0.97; all_reduce 2.2-2.3 and 2.6-2.7. process_vm_readv alone copies 3.7-5.6 GB/s
# here against 12 GB/s for memcpy, but one copy beats two.
# Inbox counters (uint64 words from the inbox start).
_HEAD = 0
_TAIL = _LINE // 8

_MIN_SLOT_BYTES = 64 << 10  # the smallest slots tried where /dev/shm is short
# Polls before the spin starts yielding the core (~0.2 us each: about 20 us).
_POLLS = 100
# Spin before sleeping. Measured with bench/collectives.py all_reduce -b 4K -e 16M -f 16
# on 2 cores: see the choice below and README "Shared memory".
SPIN_SECONDS = 0.002
_CHECK_SECONDS = 0.1  # longest futex sleep: how often a waiter checks that peers live
_TICK_SECONDS = 0.0005  # how often queued sends nobody waits for are pushed


def shm_identity() -> str | None:
    """Equal on two processes exactly when they can share a /dev/shm segment: same boot,
    same /dev/shm mount, same user. None where there is no /dev/shm."""
    try:
        st = os.stat(SHM_DIR)
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return None
    if not os.access(SHM_DIR, os.W_OK):
        return None
    return f"{boot}/{st.st_dev}/{st.st_ino}/{os.getuid()}"


# -- futex: sleep until a peer rings ---------------------------------------------------------
class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221, "s390x": 238}.get(platform.machine())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not _PRIVATE): the word is in another process too
_libc = ctypes.CDLL(None, use_errno=True)


def _futex_wait(address: int, expected: int, seconds: float) -> None:
    """Sleep while the 32-bit word at ``address`` equals ``expected`` (at most ``seconds``)."""
    if _SYS_FUTEX is None:
        time.sleep(min(seconds, 0.001))
        return
    ts = _Timespec(int(seconds), int((seconds % 1) * 1e9))
    _libc.syscall(
        _SYS_FUTEX,
        ctypes.c_void_p(address),
        _FUTEX_WAIT,
        ctypes.c_uint32(expected),
        ctypes.byref(ts),
        None,
        0,
    )


def _futex_wake(address: int) -> None:
    if _SYS_FUTEX is not None:
        _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAKE, 0x7FFFFFFF, None, None, 0)


# -- cross-memory attach: read another process's memory in one copy ---------------------------
class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_process_vm_readv = getattr(_libc, "process_vm_readv", None)
if _process_vm_readv is not None:
    _process_vm_readv.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    _process_vm_readv.restype = ctypes.c_ssize_t


def _read_remote(pid: int, address: int, out: np.ndarray) -> None:
    """Copy ``out.nbytes`` bytes at ``address`` in process ``pid`` into ``out`` (GIL free).

    Raises OSError (ESRCH: the process is gone; EPERM/ENOSYS: not allowed here)."""
    assert _process_vm_readv is not None
    base, total, done = _address_of(out), out.nbytes, 0
    while done < total:
        local = _IoVec(base + done, total - done)
        remote = _IoVec(address + done, total - done)
        got = _process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got <= 0:
            err = ctypes.get_errno() if got < 0 else 0
            raise OSError(err, f"process_vm_readv from pid {pid}: {os.strerror(err)}")
        done += got


def _can_read(pid: int, segment: _Segment) -> bool:
    """Whether this process may read ``pid``'s memory (containers often forbid it)."""
    if _process_vm_readv is None:
        return False
    probe = np.zeros(1, np.uint64)
    try:
        _read_remote(pid, int(segment.control[_C_ADDRESS]), probe.view(np.uint8))
    except OSError:
        return False
    return int(probe[0]) == _MAGIC


# -- segments --------------------------------------------------------------------------------
class _Layout:
    """Offsets in a segment with ``inboxes`` inboxes."""

    def __init__(self, size: int, inboxes: int, slots: int, slot_bytes: int) -> None:
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.record_bytes = _RECORD_HEADER + slot_bytes
        self.control_bytes = _round_up((_C_ATTACHED + size) * 8, _PAGE)
        self.inbox_bytes = _round_up(2 * _LINE + slots * self.record_bytes, _PAGE)
        self.total = self.control_bytes + inboxes * self.inbox_bytes

    def inbox_offset(self, index: int) -> int:
        return self.control_bytes + index * self.inbox_bytes


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class _Segment:
    """One mapped segment: its control words, and views of its inboxes."""

    def __init__(self, path: str, mm: mmap.mmap, layout: _Layout) -> None:
        self.path = path
        self.mm = mm
        self.layout = layout
        self.control = np.frombuffer(mm, np.uint64, layout.control_bytes // 8)
        self.bell_address = _address_of(self.control) + _C_BELL * 8

    def inbox(self, index: int) -> _Inbox:
        return _Inbox(self, index)

    def close(self) -> None:
        self.control = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it
            self.mm.close()


def _address_of(arr: np.ndarray) -> int:
    return int(arr.__array_interface__["data"][0])


class _Inbox:
    """Views of one inbox: its two counters and its slots (headers and payloads)."""

    def __init__(self, segment: _Segment, index: int) -> None:
        lay = segment.layout
        base = lay.inbox_offset(index)
        mm = segment.mm
        self.mm = mm
        self.counters = np.frombuffer(mm, np.uint64, 2 * _LINE // 8, base)
        # Record headers are packed and unpacked with struct, straight in the mapping: a
        # third of the cost of going through a numpy view per message.
        self.header_at = [base + 2 * _LINE + i * lay.record_bytes for i in range(lay.slots)]
        self.payloads = [
            np.frombuffer(
                mm, np.uint8, lay.slot_bytes, base + 2 * _LINE + i * lay.record_bytes + 64
            )
            for i in range(lay.slots)
        ]


def _create_segment(path: str, size: int, inboxes: int, config: Config) -> _Segment:
    """Make this rank's segment, all of its memory allocated now. Where /dev/shm is too
    small for the configured slots, smaller slots (down to 64 KiB) are tried first: peers
    read each segment's own layout from it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        slot_bytes = config.shm_slot_bytes
        while True:
            layout = _Layout(size, inboxes, config.shm_slots, slot_bytes)
            try:
                os.posix_fallocate(fd, 0, layout.total)
                break
            except OSError as e:
                os.ftruncate(fd, 0)
                if slot_bytes > _MIN_SLOT_BYTES:
                    slot_bytes = max(_MIN_SLOT_BYTES, slot_bytes // 2)
                    continue
                os.unlink(path)
                free = os.statvfs(SHM_DIR)
                raise TransportError(
                    f"shared memory: cannot allocate {layout.total >> 20} MiB in {SHM_DIR} "
                    f"({e}; {free.f_bavail * free.f_frsize >> 20} MiB free). Give the "
                    "container more (docker --shm-size), lower RINGCOMM_SHM_SLOTS, or use "
                    "sockets: RINGCOMM_TRANSPORT=zmq"
                ) from None
        if slot_bytes != config.shm_slot_bytes:
            log.warning(
                "shared memory: %s too small for %d KiB slots, using %d KiB (slower); "
                "give the container more (docker --shm-size)",
                SHM_DIR,
                config.shm_slot_bytes >> 10,
                slot_bytes >> 10,
            )
        mm = mmap.mmap(fd, layout.total)
    finally:
        os.close(fd)
    seg = _Segment(path, mm, layout)
    seg.control[_C_LAYOUT] = _LAYOUT
    seg.control[_C_PID] = os.getpid()
    seg.control[_C_ADDRESS] = _address_of(seg.control)  # a peer probes reading it by address
    seg.control[_C_SLOTS] = layout.slots
    seg.control[_C_SLOT_BYTES] = layout.slot_bytes
    native_shm.store_release(seg.control, _C_MAGIC, _MAGIC)  # last: the segment is ready
    return seg


def _open_segment(path: str, size: int, inboxes: int) -> _Segment | None:
    """The peer's segment (its layout read from it), or None while it is not made yet."""
    control_bytes = _Layout(size, inboxes, 2, 64).control_bytes
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        if os.fstat(fd).st_size < control_bytes:
            return None
        head = mmap.mmap(fd, control_bytes)
        control = np.frombuffer(head, np.uint64)
        ready = native_shm.load_acquire(control, _C_MAGIC) == _MAGIC
        version, slots, slot_bytes = (int(control[w]) for w in (_C_LAYOUT, _C_SLOTS, _C_SLOT_BYTES))
        del control
        head.close()
        if not ready:
            return None
        if version != _LAYOUT:
            raise TransportError(
                f"shared memory: {path} has another layout (ringcomm versions differ)"
            )
        layout = _Layout(size, inboxes, slots, slot_bytes)
        if os.fstat(fd).st_size != layout.total:
            raise TransportError(f"shared memory: {path} is not the size its layout says")
        mm = mmap.mmap(fd, layout.total)
    finally:
        os.close(fd)
    return _Segment(path, mm, layout)


class _Peer:
    """A rank on this host: its segment, our inbox in it (we send) and its inbox in ours."""

    def __init__(self, rank: int, segment: _Segment, outbox: _Inbox, inbox: _Inbox) -> None:
        self.rank = rank
        self.segment = segment
        self.pid = int(segment.control[_C_PID])
        self.outbox = outbox
        self.inbox = inbox
        self.head = 0  # records we published into outbox
        self.tail_seen = 0  # outbox records the peer has freed, as last read
        self.tail = 0  # inbox records we consumed
        self.head_seen = 0  # inbox records the peer had published, as last read
        self.lent_until = 0  # the peer reads our memory until it frees this many records
        self.by_address = False  # the peer can read our memory (set once it attached)
        self.closed_since = 0.0  # when we first saw the peer's closed flag
        self.queue: collections.deque[_Queued] = collections.deque()
        try:
            self.pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def alive(self) -> bool:
        if self.pidfd is not None:
            return not select.select([self.pidfd], [], [], 0)[0]
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


class _Queued:
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


# -- the transport ---------------------------------------------------------------------------
class ShmEndpoint(Endpoint):
    """A ZeroMQ endpoint plus what peers need to tell whether they share /dev/shm with us.

    ``mode``: ``auto`` (shared memory with peers on this host, sockets with the rest) or
    ``shm`` (shared memory with every peer, an error where that is impossible).
    """

    def __init__(self, bind_host: str, config: Config, mode: str) -> None:
        from ringcomm.transport.zmq import ZmqEndpoint

        self._config = config
        self._mode = mode
        self._zmq: ZmqEndpoint | None = ZmqEndpoint(bind_host, config)
        self._identity = shm_identity()
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
        sockets: Transport | None,
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
        self._by_address_bytes = config.shm_by_address_bytes or sys.maxsize
        self._borrowed = 0  # queued sends that still read the caller's memory
        self._records_out = 0  # records written so far: progress, for _wait
        self._scratch: np.ndarray | None = None  # where data read by address is reduced from
        self._detached = 0  # queued copied sends
        others = [r for r in local if r != rank]
        self._path = segment_path(job_id(), comm_id, rank)
        self._segment: _Segment | None = _create_segment(self._path, size, len(others), config)
        self._layout = self._segment.layout  # of our inboxes; a peer's may differ
        self._peers: dict[int, _Peer] = {}
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
        job = job_id()
        waiting = set(others)
        while waiting:
            for r in sorted(waiting):
                seg = _open_segment(segment_path(job, self.comm_id, r), self.size, len(others))
                if seg is None:
                    continue
                # In r's segment, our inbox index is our position among r's peers.
                ours_there = sorted([*others, self.rank])
                ours_there.remove(r)
                outbox = seg.inbox(ours_there.index(self.rank))
                self._peers[r] = _Peer(r, seg, outbox, self._segment.inbox(index[r]))
                peer = self._peers[r]
                readable = _can_read(peer.pid, seg)
                mark = _ATTACHED_CMA if readable else _ATTACHED
                native_shm.store_release(seg.control, _C_ATTACHED + self.rank, mark)
                waiting.discard(r)
            if waiting:
                self._check_time(deadline, f"rank(s) {sorted(waiting)} to create their segment")
                time.sleep(0.001)
        control = self._segment.control
        while not all(native_shm.load_acquire(control, _C_ATTACHED + r) for r in others):
            late = [r for r in others if not control[_C_ATTACHED + r]]
            self._check_time(deadline, f"rank(s) {late} to open this rank's segment")
            self._check_peers()
            time.sleep(0.001)
        os.unlink(self._path)
        self._path = ""
        for r, peer in self._peers.items():
            peer.by_address = int(control[_C_ATTACHED + r]) == _ATTACHED_CMA

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
        peer = self._peers.get(dst)
        if peer is None:
            if dst == self.rank:
                self._stash[(dst, tag)].append(payload.reshape(-1).view(np.uint8).copy())
            else:
                assert self._sockets is not None
                self._sockets.send(dst, tag, payload, copy=copy)
            return
        data = (payload if payload.ndim == 1 else payload.reshape(-1)).view(np.uint8)
        by_address = (
            not copy and not one_way and peer.by_address and data.nbytes >= self._by_address_bytes
        )
        with self._lock:
            offset: int | None = 0
            if not peer.queue:
                offset = self._push(peer, tag, data, 0, by_address)
                if offset is None:
                    return
            item = _Queued(tag, data.copy() if copy else data, offset, not copy, by_address)
            if copy:
                self._detached += 1
                _ticker.watch(self)
            else:
                self._borrowed += 1
            peer.queue.append(item)

    def _push(
        self, peer: _Peer, tag: Tag, data: np.ndarray, offset: int, by_address: bool
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
                peer.tail_seen = native_shm.load_acquire(outbox.counters, _TAIL)
                if peer.head - peer.tail_seen >= lay.slots:
                    break
            i = peer.head % lay.slots
            if by_address:  # one record for the whole message: where the peer reads it
                n = total
                outbox.payloads[i][:8].view(np.uint64)[0] = _address_of(data)
                flags = _BY_ADDRESS
            else:
                n = min(lay.slot_bytes, total - offset)
                if n:
                    outbox.payloads[i][:n] = data if n == total else data[offset : offset + n]
                flags = _INLINE
            _RECORD.pack_into(outbox.mm, outbox.header_at[i], *tag, total, offset, n, flags)
            peer.head += 1
            native_shm.store_fenced(outbox.counters, _HEAD, peer.head)
            wrote = True
            self._records_out += 1
            offset += n
            done = None if offset >= total else offset
        if wrote:
            _ring(peer.segment)
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
                peer.tail_seen = native_shm.load_acquire(peer.outbox.counters, _TAIL)
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
        if self._sockets is not None:
            self._sockets.flush(deadline)
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
        stashed = self._stash.get((src, tag)) if self._stash else None
        if stashed:
            data = stashed.popleft()
            if not stashed:
                del self._stash[(src, tag)]
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
            total = header[4]
            if header[:4] == tag:
                break
            key = Tag(*header[:4])
            self._stash[(src, key)].append(self._take(peer, key, total, deadline, header))
        if total != nbytes:
            self._take(peer, tag, total, deadline, header)  # keep the inbox in step
            raise self.size_error(src, tag, nbytes, total)
        self._consume(peer, tag, total, deadline, land, into, header)

    def _take(
        self, peer: _Peer, tag: Tag, total: int, deadline: float, header: tuple[int, ...]
    ) -> np.ndarray:
        """Copy a whole message out of the inbox (one that is not wanted yet)."""
        data = np.empty(total, np.uint8)

        def land(offset: int, chunk: np.ndarray) -> None:
            data[offset : offset + chunk.nbytes] = chunk

        self._consume(peer, tag, total, deadline, land, data, header)
        return data

    def _consume(
        self,
        peer: _Peer,
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
            offset, n, flags = header[5], header[6], header[7]
            inline = flags == _INLINE
            if offset != done or header[4] != total or (inline and n > lay.slot_bytes):
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
                native_shm.store_fenced(peer.inbox.counters, _TAIL, peer.tail)
                # The sender may sleep until a slot is free (or its memory is read).
                if peer.segment.control.item(_C_SLEEPING):
                    _ring(peer.segment)
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
        peer: _Peer,
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
                _read_remote(peer.pid, address, into[offset : offset + n])
                return
            if self._scratch is None:
                self._scratch = np.empty(self._layout.slot_bytes, np.uint8)
            step = self._scratch.nbytes
            for k in range(0, n, step):
                piece = self._scratch[: min(step, n - k)]
                _read_remote(peer.pid, address + k, piece)
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

    def _next_record(self, peer: _Peer, tag: Tag, deadline: float) -> tuple[int, ...]:
        """The header of the next record from ``peer`` (kind, seq, step, segment, message
        bytes, offset, bytes here, flags), once it is there."""
        if peer.head_seen <= peer.tail:
            counters = peer.inbox.counters
            peer.head_seen = native_shm.load_acquire(counters, _HEAD)
            if peer.head_seen <= peer.tail:

                def ready() -> bool:
                    peer.head_seen = native_shm.load_acquire(counters, _HEAD)
                    return peer.head_seen > peer.tail

                self._wait(ready, deadline, lambda: self.timeout_error(peer.rank, tag))
        inbox = peer.inbox
        return _RECORD.unpack_from(inbox.mm, inbox.header_at[peer.tail % self._layout.slots])

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
            for _ in range(_POLLS):
                if ready():
                    return
        now = time.monotonic()
        spin_until = now + SPIN_SECONDS
        check_at = now + _CHECK_SECONDS
        records_out = self._records_out
        while True:
            if queued:
                queued = not self._push_queued()
            if ready():
                return
            if self._closed or self.aborted:
                raise self.closed_error()
            now = time.monotonic()
            if now >= deadline:
                raise timeout_error()
            if now >= check_at:
                self._check_peers()
                check_at = now + _CHECK_SECONDS
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
            bell = int(control[_C_BELL]) & 0xFFFFFFFF
            native_shm.store_fenced(control, _C_SLEEPING, 1)
            try:
                # Look again with the flag up: a peer that published (or freed a slot)
                # before it could see the flag is seen here; one after it rings the bell.
                self._push_queued()
                if ready():
                    return
                _futex_wait(bell_address, bell, min(_CHECK_SECONDS, deadline - now))
            finally:
                native_shm.store_release(control, _C_SLEEPING, 0)

    def _check_peers(self) -> None:
        now = time.monotonic()
        for peer in self._peers.values():
            if not peer.alive():
                raise PeerLostError(
                    f"{self.current_op}: rank {peer.rank} (pid {peer.pid}, same host) exited "
                    f"while rank {self.rank} was working with it"
                )
            if peer.rank == self.waiting_for and peer.segment.control[_C_CLOSED]:
                peer.closed_since = peer.closed_since or now
                if now - peer.closed_since >= _CLOSED_GRACE_SECONDS:
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
        except Exception:
            return False
        return self._detached > 0

    def abort(self) -> None:
        """See :meth:`Transport.abort`; the socket transport to other hosts too."""
        super().abort()
        if self._sockets is not None:
            self._sockets.abort()

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
            native_shm.store_release(self._segment.control, _C_CLOSED, 1)
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
        if self._segment is not None:
            self._segment.close()
            self._segment = None


def _ring(segment: _Segment) -> None:
    """Wake the owner of ``segment`` if it sleeps (after a fenced publish or free)."""
    control = segment.control
    if control.item(_C_SLEEPING):
        control[_C_BELL] = (int(control[_C_BELL]) + 1) & 0xFFFFFFFF
        _futex_wake(segment.bell_address)


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
            time.sleep(_TICK_SECONDS)


_ticker = _Ticker()
