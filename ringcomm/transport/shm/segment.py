"""A rank's shared-memory segment: its layout, creating and opening it, and its name.

A segment is a control page and one inbox per peer on the host::

    control page   magic, layout version, pid, address of this page, slots, slot bytes,
                   closed | bell (futex word) | sleeping flag | attached[rank] ...
    inbox 0        head | tail | slot 0: record header + payload | slot 1 ...
    inbox 1        ...

Words written by different processes sit on different cache lines. The owner creates and
fully allocates its segment (``posix_fallocate``), peers open it and read its layout from
it, and the owner unlinks it once everyone has attached.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct

import numpy as np

from ringcomm import hosts
from ringcomm.config import Config
from ringcomm.errors import TransportError
from ringcomm.logs import get_logger
from ringcomm.native import shm as native_shm
from ringcomm.transport.shm import syscalls

log = get_logger(__name__)

MAGIC = 0x52434D5348  # "RCMSH"
LAYOUT_VERSION = 2
PAGE = 4096
LINE = 64  # one cache line: counters written by different processes never share one
RECORD_HEADER_BYTES = 64
# A record's header, eight uint64 words: the tag (kind, seq, step, segment), the bytes of
# the whole message, where this record's bytes start in it, the bytes in this record, and
# its flags (INLINE or BY_ADDRESS). Unpacked straight from the mapping with struct: a third of
# the cost of a numpy view per message.
RECORD = struct.Struct("<8Q")
TAG_WORDS = 4  # header[:TAG_WORDS] is the tag
MESSAGE_BYTES_WORD = 4  # header[MESSAGE_BYTES_WORD]: bytes of the whole message
MIN_SLOT_BYTES = 64 << 10  # the smallest slots tried where /dev/shm is short
# Control page (uint64 words): magic, layout version, pid, the address of this page in the
# owner (to probe reading by address), the owner's slots and slot bytes, then the futex
# word and the sleeping flag on their own lines, then one "attached" flag per rank.
C_MAGIC, C_LAYOUT, C_PID, C_ADDRESS, C_SLOTS, C_SLOT_BYTES = 0, 1, 2, 3, 4, 5
C_CLOSED = 6  # the owner closed (or aborted) its communicator
# The owner's operation failed while peers could still read its memory by address: what
# they read from now on may have changed, so they must fail instead of using it.
C_RETRACTED = 7
C_BELL = LINE // 8
C_SLEEPING = 2 * LINE // 8
C_ATTACHED = 3 * LINE // 8
# What a peer writes into "attached": it mapped the segment; and it can also read this
# process's memory directly (cross-memory attach, process_vm_readv).
ATTACHED, ATTACHED_CMA = 1, 2
# Record flags: the payload is in the slot, or the slot holds the address of the payload
# in the sender's memory, which the receiver reads itself (one copy instead of two).
INLINE, BY_ADDRESS = 0, 1
# Inbox counters (uint64 words from the inbox start).
HEAD = 0
TAIL = LINE // 8
INBOX_COUNTER_BYTES = 2 * LINE  # head and tail, a cache line each, before the slots


# -- names -------------------------------------------------------------------------------------
NAME_PREFIX = "ringcomm-"


def segment_path(job: str, comm_id: int, rank: int) -> str:
    """Where rank ``rank`` of communicator ``comm_id`` of job ``job`` keeps its inboxes."""
    return os.path.join(hosts.SHM_DIR, f"{NAME_PREFIX}{job}-{comm_id:016x}-{rank}")


def job_segments(job: str) -> list[str]:
    """Names of ``job``'s segments still in /dev/shm."""
    prefix = f"{NAME_PREFIX}{job}-"
    with contextlib.suppress(OSError):
        return sorted(n for n in os.listdir(hosts.SHM_DIR) if n.startswith(prefix))
    return []


def remove_job_segments(job: str) -> list[str]:
    """Unlink every segment name of ``job`` still in /dev/shm; return the names removed
    (``ringcomm-run`` calls it after its job: only a rank killed while connecting leaves
    one)."""
    removed = []
    for name in job_segments(job):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(hosts.SHM_DIR, name))
            removed.append(name)
    return removed


# -- layout ------------------------------------------------------------------------------------
class Layout:
    """Offsets in a segment with ``inboxes`` inboxes."""

    def __init__(self, size: int, inboxes: int, slots: int, slot_bytes: int) -> None:
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.record_bytes = RECORD_HEADER_BYTES + slot_bytes
        self.control_bytes = _round_up((C_ATTACHED + size) * 8, PAGE)
        self.inbox_bytes = _round_up(INBOX_COUNTER_BYTES + slots * self.record_bytes, PAGE)
        self.total = self.control_bytes + inboxes * self.inbox_bytes

    def inbox_offset(self, index: int) -> int:
        return self.control_bytes + index * self.inbox_bytes


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class Segment:
    """One mapped segment: its control words, and views of its inboxes."""

    def __init__(self, path: str, mm: mmap.mmap, layout: Layout) -> None:
        self.path = path
        self.mm = mm
        self.layout = layout
        self.control = np.frombuffer(mm, np.uint64, layout.control_bytes // 8)
        self.bell_address = syscalls.address_of(self.control) + C_BELL * 8

    def inbox(self, index: int) -> Inbox:
        return Inbox(self, index)

    def close(self) -> None:
        self.control = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it
            self.mm.close()


class Inbox:
    """Views of one inbox: its two counters and its slots (headers and payloads)."""

    def __init__(self, segment: Segment, index: int) -> None:
        lay = segment.layout
        base = lay.inbox_offset(index)
        mm = segment.mm
        self.mm = mm
        self.counters = np.frombuffer(mm, np.uint64, INBOX_COUNTER_BYTES // 8, base)
        slot_at = [base + INBOX_COUNTER_BYTES + i * lay.record_bytes for i in range(lay.slots)]
        self.header_at = slot_at
        self.payloads = [
            np.frombuffer(mm, np.uint8, lay.slot_bytes, at + RECORD_HEADER_BYTES) for at in slot_at
        ]


def create_segment(path: str, size: int, inboxes: int, config: Config) -> Segment:
    """Make this rank's segment, all of its memory allocated now. Where /dev/shm is too
    small for the configured slots, smaller slots (down to 64 KiB) are tried first: peers
    read each segment's own layout from it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        slot_bytes = config.shm_slot_bytes
        while True:
            layout = Layout(size, inboxes, config.shm_slots, slot_bytes)
            try:
                os.posix_fallocate(fd, 0, layout.total)
                break
            except OSError as e:
                os.ftruncate(fd, 0)
                if slot_bytes > MIN_SLOT_BYTES:
                    slot_bytes = max(MIN_SLOT_BYTES, slot_bytes // 2)
                    continue
                os.unlink(path)
                free = os.statvfs(hosts.SHM_DIR)
                raise TransportError(
                    f"shared memory: cannot allocate {layout.total >> 20} MiB in {hosts.SHM_DIR} "
                    f"({e}; {free.f_bavail * free.f_frsize >> 20} MiB free). Give the "
                    "container more (docker --shm-size), lower RINGCOMM_SHM_SLOTS, or use "
                    "sockets: RINGCOMM_TRANSPORT=zmq"
                ) from None
        if slot_bytes != config.shm_slot_bytes:
            log.warning(
                "shared memory: %s too small for %d KiB slots, using %d KiB (slower); "
                "give the container more (docker --shm-size)",
                hosts.SHM_DIR,
                config.shm_slot_bytes >> 10,
                slot_bytes >> 10,
            )
        mm = mmap.mmap(fd, layout.total)
    finally:
        os.close(fd)
    seg = Segment(path, mm, layout)
    seg.control[C_LAYOUT] = LAYOUT_VERSION
    seg.control[C_PID] = os.getpid()
    seg.control[C_ADDRESS] = syscalls.address_of(seg.control)  # a peer probes reading it by address
    seg.control[C_SLOTS] = layout.slots
    seg.control[C_SLOT_BYTES] = layout.slot_bytes
    native_shm.store_release(seg.control, C_MAGIC, MAGIC)  # last: the segment is ready
    return seg


def open_segment(path: str, size: int, inboxes: int) -> Segment | None:
    """The peer's segment (its layout read from it), or None while it is not made yet."""
    control_bytes = Layout(size, inboxes, 2, 64).control_bytes
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        if os.fstat(fd).st_size < control_bytes:
            return None
        head = mmap.mmap(fd, control_bytes)
        control = np.frombuffer(head, np.uint64)
        ready = native_shm.load_acquire(control, C_MAGIC) == MAGIC
        version, slots, slot_bytes = (int(control[w]) for w in (C_LAYOUT, C_SLOTS, C_SLOT_BYTES))
        del control
        head.close()
        if not ready:
            return None
        if version != LAYOUT_VERSION:
            raise TransportError(
                f"shared memory: {path} has another layout (ringcomm versions differ)"
            )
        layout = Layout(size, inboxes, slots, slot_bytes)
        if os.fstat(fd).st_size != layout.total:
            raise TransportError(f"shared memory: {path} is not the size its layout says")
        mm = mmap.mmap(fd, layout.total)
    finally:
        os.close(fd)
    return Segment(path, mm, layout)


def can_read(pid: int, segment: Segment) -> bool:
    """Whether this process may read ``pid``'s memory (containers often forbid it)."""
    if syscalls.PROCESS_VM_READV is None:
        return False
    probe = np.zeros(1, np.uint64)
    try:
        syscalls.read_remote(pid, int(segment.control[C_ADDRESS]), probe.view(np.uint8))
    except OSError:
        return False
    return int(probe[0]) == MAGIC


def wake_owner(segment: Segment) -> None:
    """Wake the owner of ``segment`` if it sleeps (after a fenced publish or free)."""
    control = segment.control
    if control.item(C_SLEEPING):
        control[C_BELL] = (int(control[C_BELL]) + 1) & 0xFFFFFFFF
        syscalls.futex_wake(segment.bell_address)
