"""The board: shared memory on which the ranks of one host run collectives directly.

Point-to-point algorithms take O(n) steps (a ring: 2(n-1)), and every step is a Python
send, wait and reduce. On the board a collective takes one or two steps whatever n is, as
MPI libraries' shared-memory collectives do (Open MPI's coll/sm and xhc, MPICH's
release-gather): each rank copies its data once into its own area, raises a counter, and
reads or reduces what it needs straight out of its peers' areas.

Each rank of a communicator whose ranks all share this host owns one board file::

    control page   magic, pid, readable | READY, SIZE[2], ADDRESS[2] | REDUCED | DONE | ...
    area 0         data of the operations with an even number
    area 1         ... odd

Operations on the board are numbered 1, 2, ... in issue order (the same on every rank: an
operation too large for an area is cut into pieces, each numbered). A rank raises READY to
k once its data for operation k is in area k % 2 (and the operation's size in SIZE[k % 2],
which its readers compare with their own: ranks that pass different sizes fail as they do
point to point, never reading past what was written), REDUCED to k once its share of a
reduction is, and DONE to k once it read everything it needed of operation k. Two areas let
a rank publish operation k while a slow peer still reads operation k - 1; before it writes
area k % 2 again it waits until every peer's DONE has reached k - 2 (usually long true).

Waiting is the transport's: poll, spin while yielding, then sleep on the futex in the
rank's segment, which a peer rings after it raised a counter (so an idle rank does not burn
a core, and a host with more ranks than cores does not collapse). A peer that exits or
closes is noticed as in any other wait.

Boards are made on first use, so communicators that never run a board collective cost no
/dev/shm: every rank creates its file, the ranks agree through the transport that all of
them could (a full /dev/shm on one rank turns the board off for the communicator, on every
rank alike), map each other's files, agree once more, and unlink their own: a name lives
only while the board is being made (a rank killed then leaves it to the launcher's cleanup,
as a segment).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from ringcomm import hosts
from ringcomm.errors import CommTimeoutError, PeerLostError, TransportError
from ringcomm.logs import get_logger
from ringcomm.native import board as native_board
from ringcomm.native import shm as native_shm
from ringcomm.transport.shm import syscalls
from ringcomm.transport.shm.segment import (
    C_SLEEPING,
    LINE,
    MAGIC,
    NAME_PREFIX,
    PAGE,
    wake_owner,
)
from ringcomm.transport.shm.slots import ShmTransport

log = get_logger(__name__)

# native_board.piece and its bits, bound once: the small-message path reads them per call.
_piece, _pieces, _STATUS_SPAN = native_board.piece, native_board.pieces, native_board.STATUS_SPAN
_PUBLISH, _FINISH, _IN_PIECES = native_board.PUBLISH, native_board.FINISH, native_board.IN_PIECES
_PUBLISHED, _FINISHED, _WAKE = native_board.PUBLISHED, native_board.FINISHED, native_board.WAKE
_BLOCKED, _NOT_READY = native_board.BLOCKED, native_board.NOT_READY
_MISMATCH = native_board.MISMATCH
_AWAIT_DONE, _AWAITED, _NOT_DONE = (
    native_board.AWAIT_DONE,
    native_board.AWAITED,
    native_board.NOT_DONE,
)
_UNREAD = native_board.UNREAD
_GATHER, _GATHERED, _NOT_REDUCED = (
    native_board.GATHER,
    native_board.GATHERED,
    native_board.NOT_REDUCED,
)
_STEPS_TO_TAKE = _PUBLISH | _FINISH | _GATHER | _AWAIT_DONE
_ALL_STEPS = native_board.IN_PIECES - 1  # the bits piece() reads


def _all_taken(steps: int) -> int:
    """What piece() says of a piece that took every one of ``steps`` with no peer asleep
    (as native.board._through)."""
    return (
        (_PUBLISHED if steps & _PUBLISH else 0)
        | (_FINISHED if steps & _FINISH else 0)
        | (_GATHERED if steps & _GATHER else 0)
        | (_AWAITED if steps & _AWAIT_DONE else 0)
    )


# steps -> _all_taken(steps), for every combination of the bits piece() takes: a blocking
# call that went through returns on one lookup instead of _carry_on's checks (a 4 KiB
# broadcast's root publishes only, its readers finish only: its Python path, the native
# call stubbed out, 2.0 -> 1.8 us a call).
_ALL_TAKEN = [_all_taken(steps) for steps in range(_ALL_STEPS + 1)]

# Counter words in the control page, a cache line apart (peers poll them).
C_MAGIC, C_PID = 0, 1
# 1 if every peer may read this rank's memory (process_vm_readv) and it did not turn reading
# by address off: written before the ranks first agree, read once every board is mapped
# (see Board.by_address).
C_READABLE = 2
# 1 if this rank runs the board's pieces in native calls: written and read likewise (see
# Board.native_everywhere).
C_NATIVE = 3
READY = LINE // 8
SIZE = READY + 1  # SIZE and SIZE + 1: the bytes of the operation of READY's parity
# ADDRESS and ADDRESS + 1: where the data of the operation of that parity lies in the
# publisher's memory, for peers to read it themselves (0: it is in the area).
ADDRESS = SIZE + 2
REDUCED = 2 * LINE // 8
DONE = 3 * LINE // 8
# MAPPED + 4 * parity: fd, inode, file size, offset of the buffer of that parity's operation
# when it lives in a shared-memory file the peers map (see Board.publish_mapping).
MAPPED = 4 * LINE // 8
# MAP_FAILED + parity: 1 if this rank could not map every peer's buffer of that operation
# (written before it raises REDUCED, which keeps its meaning for the operations after).
MAP_FAILED = MAPPED + 8
# The probes (Board.settle_copies): each rank's round counter, rank 0's verdict
# (VERDICT_SHARED or VERDICT_APART) and its by-address threshold, which every rank takes;
# whether the copy probe follows the cache probe (1), and rank 0's verdict on copies
# through the areas (VERDICT_SHARED: they go so).
PROBE = 6 * LINE // 8
VERDICT = PROBE + 1
BY_ADDRESS_FROM = PROBE + 2
COPY_PROBE = PROBE + 3
AREA_VERDICT = PROBE + 4
VERDICT_SHARED, VERDICT_APART = 1, 2
# Rank 0 copies this much that a peer just wrote, this many times per peer (and the copy
# probe broadcasts it, COPY_PROBE_ROUNDS times each way after one untimed each way: a
# broadcast of 64 KiB at n=2 takes 5-15 us, and 7 timed rounds each way gave either
# verdict on this machine's Intel Xeon from launch to launch).
PROBE_BYTES = 64 << 10
PROBE_ROUNDS = 7
COPY_PROBE_ROUNDS = 25
# A peer's freshly written lines copied this many times slower than this rank's own: their
# cores share no cache. 2026-12-06, this 2-core machine with its vCPUs sharing a cache:
# 64 KiB 1.2 us both ways (ratio 0.9-1.4 from 16 KiB to 1 MiB); earlier sessions found
# such lines up to 10x slower when they did not (see docs/benchmarks.md).
APART_RATIO = 3.0
# Where they share one, broadcast data, all_gather inputs and reduce_scatter inputs up to
# this size (and an area's) go through the area in one piece. n=2 broadcast, 2026-12-06,
# through the area vs by address, back to back | barrier before each: 512 KiB 20 vs 39 |
# 34 vs 40 us, but 1 MiB 29-104 vs 76-79 | 103-166 vs 76-77 (two 1 MiB copies in and out
# of a 2 MiB L2, launch by launch). all_reduce and larger broadcasts go in pieces instead.
COPY_THROUGH_AREA_BYTES = 512 << 10
# An all_reduce through the areas goes in pieces of at most this much (each two steps: see
# ringcomm.algorithms.direct.allreduce_piece), so that a piece, its copy and the peers'
# stay in cache. n=2, 2026-12-06, 1 MiB pieces against 512 KiB: 1 MiB 171 against 88 us,
# 4 MiB 712 against 318; 128-512 KiB within each other's spread; n=4 alike, but 1 MiB
# 158 against 203-213.
PIECE_BYTES = 512 << 10
# What SIZE says besides the bytes: the operation exchanges 16-bit floats (compression), so
# a rank that runs it against a plain one of the same size fails instead of misreading.
_AS_FLOAT16, _AS_BFLOAT16, _AS_MAPPED = 1 << 62, 1 << 61, 1 << 60
# Peers' buffers kept mapped per peer (buckets are reused step after step); the oldest go.
_MAPPINGS_KEPT = 16
# A native poll of a counter costs about 25 ns (a pause each), a transport poll about 0.2 us:
# native calls spin about as long as the transport polls before it yields.
_NATIVE_SPINS_PER_POLL = 8
# How long a native wait yields the core between polls (after its spins) before it returns
# to the transport's wait, which yields, then sleeps, in Python at several times the cost a
# poll: a waiting rank that gives its core back sooner lets the rank it waits for run.
NATIVE_YIELD_SECONDS = 0.0002
# What a native call reads a peer's data into before it reduces it (two halves: the peer's
# block, and this rank's own where it reduces in place): small enough to stay in cache.
_NATIVE_SCRATCH_BYTES = 256 << 10
# An all_gather whose data on the host (every rank's output, and input where apart) is at
# least this many times the last-level cache writes its output with streaming stores
# (native.board._copy_streaming), where the host's ranks do not outnumber its cores.
# 2026-12-07, the same launch switching between them every 15 calls, six rounds, median
# us plain | streaming: n=2 out of place 4 MiB 229 | 282, 8 MiB 378 | 426 (24 MiB of data
# in a 32 MiB L3: it stays in cache), 16 MiB 900 | 847, 32 MiB 2114 | 1965, 64 MiB 6957
# | 5549; in place 16 MiB 297 | 403 (32 MiB of data), 32 MiB 787 | 768, 64 MiB 1695 |
# 1418. Ranks outnumbering the cores lose it between them: n=8 on 2 cores, 16 MiB 7960 |
# 8580; n=4, 8 MiB 1579 | 1624, 16 MiB 3090 | 2936.
STREAM_CACHE_FACTOR = 1.25
_CACHE_BYTES_UNKNOWN = 32 << 20  # where the OS does not say
# ... but never from more than this: a last-level cache the OS reports may be far more than
# the ranks get of it. 2026-12-08, the Intel Xeon VM (2 vCPUs, 480 MiB of L3 reported),
# n=2, us plain | streaming, host data in brackets: out of place 16 MiB 1255 | 1440-1469
# (48 MiB), 32 MiB 3564 | 2932-3154 (96 MiB), 64 MiB 9134-9173 | 7081-7105 (192 MiB); in
# place 32 MiB 1273-1290 | 1571-1593 (64 MiB), 64 MiB 4261-4277 | 4007-4607 (128 MiB).
STREAM_BYTES_CAP = 96 << 20


def stream_bytes_for(setting: int | None, oversubscribed: bool = False) -> int:
    """RINGCOMM_SHM_BOARD_STREAM_BYTES, or where it is auto (None) the data from which an
    all_gather streams by this host's last-level cache (STREAM_CACHE_FACTOR, at most
    STREAM_BYTES_CAP); 0 (never) where the host's ranks outnumber its cores."""
    if setting is not None:
        return setting
    if oversubscribed:
        return 0
    cache = hosts.last_level_cache_bytes() or _CACHE_BYTES_UNKNOWN
    return min(int(cache * STREAM_CACHE_FACTOR), STREAM_BYTES_CAP)


def _runs_native(transport: ShmTransport) -> bool:
    """Whether this rank runs the board's pieces in native calls."""
    return bool(transport.board_native and native_board.AVAILABLE)


_NO_BOARD = "shared memory: no board for the direct collectives (%s); point to point instead"
_WHAT = {
    READY: "publish its data",
    REDUCED: "publish its reduced share (or write a broadcast's share)",
    DONE: "finish reading",
    PROBE: "take its turn in the board's cache probe",
}


def share_a_cache(remote: dict[int, list[float]], local: list[float]) -> bool:
    """Whether copying what each peer just wrote (``remote[peer]``: the times of its rounds)
    is about as fast as copying what this rank just wrote (``local``): medians, every peer
    within :data:`APART_RATIO`."""
    own = statistics.median(local)
    return all(statistics.median(times) <= APART_RATIO * own for times in remote.values())


def _page_aligned(nbytes: int) -> np.ndarray:
    """``nbytes`` of uint8 from a page boundary, as the areas lie, so that the probe's
    copies measure the caches only: glibc's memcpy runs 12-15x slower on this machine's
    AMD EPYC where the destination lies a few bytes past a multiple of 4 KiB from the
    source (``native.board._emit_copy``), as two malloc'ed arrays side by side do."""
    raw = np.empty(nbytes + PAGE, np.uint8)
    start = -raw.ctypes.data % PAGE
    return raw[start : start + nbytes]


def _size_text(word: int) -> str:
    """What a SIZE word says, for an error."""
    nbytes = word & (_AS_MAPPED - 1)
    if word & _AS_FLOAT16:
        return f"{nbytes} bytes as float16"
    if word & _AS_BFLOAT16:
        return f"{nbytes} bytes as bfloat16"
    if word & _AS_MAPPED:
        return f"{nbytes} bytes in shared memory"
    return f"{nbytes} bytes"


def board_path(job: str, comm_id: int, rank: int) -> str:
    """Where rank ``rank`` of communicator ``comm_id`` of job ``job`` keeps its board (the
    launcher's cleanup finds it by the segments' prefix)."""
    from ringcomm import hosts

    return os.path.join(hosts.SHM_DIR, f"{NAME_PREFIX}{job}-{comm_id:016x}-{rank}-board")


class Board:
    """Every rank's board file, mapped: counters and the two areas of each rank."""

    READY, REDUCED, DONE = READY, REDUCED, DONE

    def __init__(self, transport: ShmTransport, area_bytes: int, maps: list[mmap.mmap]) -> None:
        self.transport = transport
        self.rank = transport.rank
        self.size = transport.size
        self.area_bytes = area_bytes
        self.count = 0  # operations (pieces) run on the board so far
        self._maps = maps
        self.counters = [np.frombuffer(m, np.uint64, PAGE // 8) for m in maps]
        self.areas = [
            [np.frombuffer(m, np.uint8, area_bytes, PAGE + p * area_bytes) for p in (0, 1)]
            for m in maps
        ]
        self.others = [r for r in range(self.size) if r != self.rank]
        # Every rank may read every other's memory: operations may go by address on every
        # rank alike (each knows only who may read its own memory; the board tells all).
        self.by_address = all(int(c[C_READABLE]) for c in self.counters)
        # Every rank runs native pieces: an operation whose Python steps would read the
        # areas may go by address instead (reduce_scatter).
        self.native_everywhere = all(int(c[C_NATIVE]) for c in self.counters)
        # The root of a broadcast may write into its readers' buffers (BROADCAST_SPLIT):
        # every rank reads by address, runs native calls, and has process_vm_writev (the
        # kernel allows it where it allows process_vm_readv).
        self.writes_by_address = (
            self.by_address and self.native_everywhere and syscalls.PROCESS_VM_WRITEV is not None
        )
        self._segments = [transport.peer_segment(r) for r in self.others]
        # (rank, inode, file size) -> that peer's file, mapped (see map_published)
        self._mapped: dict[tuple[int, int, int], mmap.mmap] = {}
        # Where the native calls find everything (see ringcomm.native.board); None: the
        # pieces run in Python steps.
        self.table: np.ndarray | None = None
        # an operation larger than this that goes through the areas goes in pieces
        self.piece_bytes = min(PIECE_BYTES, self.area_bytes)
        self._scratch: np.ndarray | None = None  # where the native calls read peers into
        # an all_gather with this much data on the host streams its output (0: never)
        self.stream_bytes = stream_bytes_for(
            transport.board_stream_bytes, oversubscribed=not transport.polls
        )
        if _runs_native(transport):
            self.table = self._native_table()
        self._spins = transport.polls * _NATIVE_SPINS_PER_POLL
        # Data this large a rank (or an all_reduce slice, a reduce_scatter chunk) is read
        # where it lies: rank 0's RINGCOMM_SHM_BOARD_BY_ADDRESS_BYTES, for every rank alike
        # once settle_copies ran (ranks that chose apart would read what was never written).
        self.by_address_bytes: int = transport.board_by_address_bytes
        # broadcast data, all_gather inputs and reduce_scatter inputs this large are read
        # where they lie (else through the owner's area); see settle_copies
        self.read_in_place_bytes: int = self.by_address_bytes
        self.shared_cache: bool | None = None  # None: not settled (every rank alike)
        # whether copied data goes through the areas (see settle_copies); None: not settled
        self.area_copies: bool | None = None
        # the cache probe's medians, microseconds: the slowest peer's, rank 0's own (rank 0
        # only, where it probed)
        self.probed_us: tuple[float, float] | None = None
        # the copy probe's medians, microseconds: a broadcast through the areas, by address
        self.probed_copies_us: tuple[float, float] | None = None

    def settle_copies(
        self,
        shared: bool | None,
        area_copies: bool | None,
        deadline: float,
        broadcast: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        """Settle how the board's data travels, a collective step in which rank 0's
        settings (and probes) decide for every rank.

        :attr:`shared_cache`: whether the ranks' cores share a cache (``shared``; None:
        probe it, :meth:`_probe_peers`, RINGCOMM_SHM_BOARD_SHARED_CACHE). Where they do, an
        all_reduce from 64 KiB goes through the areas in pieces, else by address. Where
        lines one core writes are cheap for another to read, the areas' reductions read
        them in place where by address each is first copied: n=2 all_reduce 256 KiB 24
        against 55 us (this machine's AMD EPYC), 30 against 50 (its Intel Xeon).

        :attr:`area_copies`: whether broadcast, all_gather and reduce_scatter data that fits
        an area (up to :data:`COPY_THROUGH_AREA_BYTES`) goes through it (the publisher's
        copy in, the reader's out) rather than by address (one ``process_vm_readv``:
        :attr:`read_in_place_bytes`), and broadcasts and all_gathers go in pieces through
        the areas (``area_copies``; None: as ``shared`` where that is set or the cores share
        no cache, else probe it, :meth:`_probe_copies`, with ``broadcast``: the caller's
        native broadcast from rank 0 as the board stands; RINGCOMM_SHM_BOARD_AREA_COPIES).
        A shared cache does not settle it: on the AMD EPYC the area won (n=2 broadcast
        256 KiB 10 against 22 us, all_gather 1 MiB 40 against 55), but on the Intel Xeon,
        whose cores share a cache as well, it lost (broadcast 64 KiB 12 against 5.7 us,
        256 KiB 17 against 9.1, all_gather 256 KiB 20 against 12): there the root's copy
        into lines its reader last read costs about 10 ns a line (11 us at 64 KiB). Where
        the cores share no cache, the area loses too (all_gather 256 KiB 75 against 25 us).

        Every rank also takes rank 0's :attr:`by_address_bytes`."""
        nbytes = min(PROBE_BYTES, self.area_bytes)
        shared, probe_copies = self._agree_cache(shared, area_copies, nbytes, deadline)
        if probe_copies:
            assert broadcast is not None
            self._probe_copies(shared, nbytes, broadcast, deadline)
        verdict = int(native_shm.load_acquire(self.counters[0], AREA_VERDICT))
        self._settle(shared, verdict == VERDICT_SHARED)

    def _settle(self, shared: bool, area_copies: bool) -> None:
        self.shared_cache, self.area_copies = shared, area_copies
        self.read_in_place_bytes = self.by_address_bytes
        if area_copies:
            through_area = min(self.area_bytes, COPY_THROUGH_AREA_BYTES)
            self.read_in_place_bytes = max(self.read_in_place_bytes, through_area + 1)

    def _agree_cache(
        self, shared: bool | None, area_copies: bool | None, nbytes: int, deadline: float
    ) -> tuple[bool, bool]:
        """Whether the ranks' cores share a cache, as rank 0 says (``shared`` there, else
        its probe), and whether the copy probe follows (rank 0's COPY_PROBE: its
        ``area_copies`` and ``shared`` are None, its cores share a cache, and every rank
        may read by address in native calls from ``nbytes``). Rank 0 tells every rank
        through VERDICT, its :attr:`by_address_bytes` through BY_ADDRESS_FROM, and where no
        copy probe follows its verdict on copies through AREA_VERDICT (its
        ``area_copies``, else ``shared``). The peers always take their turns (a rank 0 that
        does not probe releases them at once), so ranks set alike or not never wait
        apart."""
        rounds = PROBE_ROUNDS * (self.size - 1)
        if self.rank == 0:
            unset = shared is None and area_copies is None
            if shared is None:
                shared = self._probe_peers(nbytes, deadline)
            probe_copies = (
                unset
                and shared
                and self.by_address
                and self.native_everywhere
                and nbytes >= self.by_address_bytes
                and bool(self.others)
            )
            copies = shared if area_copies is None else area_copies
            self.counters[0][VERDICT] = VERDICT_SHARED if shared else VERDICT_APART
            self.counters[0][BY_ADDRESS_FROM] = self.by_address_bytes
            self.counters[0][COPY_PROBE] = int(probe_copies)
            self.counters[0][AREA_VERDICT] = VERDICT_SHARED if copies else VERDICT_APART
            self.raise_counter(PROBE, rounds + 1)
            return shared, probe_copies
        mine = self.areas[self.rank][0][:nbytes]
        first = (self.rank - 1) * PROBE_ROUNDS + 1  # rank 0 probes its peers in rank order
        for j in range(first, first + PROBE_ROUNDS):
            self.wait(PROBE, j - 1, deadline, [0])
            mine.fill(j & 0xFF)
            self.raise_counter(PROBE, j)
        self.wait(PROBE, rounds + 1, deadline, [0])
        self.by_address_bytes = int(self.counters[0][BY_ADDRESS_FROM])
        shared = int(native_shm.load_acquire(self.counters[0], VERDICT)) == VERDICT_SHARED
        return shared, bool(self.counters[0][COPY_PROBE])

    def _probe_peers(self, nbytes: int, deadline: float) -> bool:
        """Rank 0's probe: time copying the ``nbytes`` each peer just wrote into its area
        (round by round, peer after peer) against copying what this rank just wrote."""
        own, into = _page_aligned(nbytes), _page_aligned(nbytes)
        remote: dict[int, list[float]] = {}
        local: list[float] = []
        clock = time.perf_counter
        j = 0
        for r in self.others:
            theirs, times = self.areas[r][0][:nbytes], remote.setdefault(r, [])
            for _ in range(PROBE_ROUNDS):
                j += 1
                self.wait(PROBE, j, deadline, [r])
                t0 = clock()
                np.copyto(into, theirs)
                t1 = clock()
                own.fill(j & 0xFF)
                t2 = clock()
                np.copyto(into, own)
                times.append(t1 - t0)
                local.append(clock() - t2)
                self.raise_counter(PROBE, j)  # the next round (peer) may write
        shared = share_a_cache(remote, local)
        slowest = max(statistics.median(t) for t in remote.values())
        self.probed_us = (slowest * 1e6, statistics.median(local) * 1e6)
        log.debug(
            "rank 0: %d KiB a peer wrote copied in %.2f us (slowest peer), its own in %.2f: "
            "the ranks %s a cache",
            nbytes >> 10, *self.probed_us, "share" if shared else "do not share",
        )  # fmt: skip
        return shared

    def _probe_copies(
        self,
        shared: bool,
        nbytes: int,
        broadcast: Callable[[np.ndarray], None],
        deadline: float,
    ) -> None:
        """The copy probe, on every rank: ``broadcast`` ``nbytes`` from rank 0 the way the
        operation goes, alternately through the areas and by address, COPY_PROBE_ROUNDS
        times each way after one untimed round each way; rank 0 times each until every
        reader is done with it (the data freshly written, as a collective's usually is) and
        says through AREA_VERDICT whether the areas' median is the faster; the peers wait for
        it."""
        data = np.zeros(nbytes // 4, np.float32)
        times: tuple[list[float], list[float]] = ([], [])
        clock = time.perf_counter
        for i in range(-2, 2 * COPY_PROBE_ROUNDS):
            through_areas = i % 2 == 0
            self._settle(shared, through_areas)
            if self.rank == 0:
                data.fill(i)
            t0 = clock()
            broadcast(data)
            if self.rank == 0:
                self.wait(DONE, self.count, deadline)  # (by address, it waited already)
            if i >= 0:
                times[0 if through_areas else 1].append(clock() - t0)
        rounds = PROBE_ROUNDS * (self.size - 1)
        if self.rank != 0:
            self.wait(PROBE, rounds + 2, deadline, [0])
            return
        area_us, address_us = (statistics.median(t) * 1e6 for t in times)
        self.probed_copies_us = (area_us, address_us)
        areas = area_us <= address_us
        self.counters[0][AREA_VERDICT] = VERDICT_SHARED if areas else VERDICT_APART
        self.raise_counter(PROBE, rounds + 2)
        log.debug(
            "rank 0: %d KiB broadcast through the areas in %.2f us, by address in %.2f: "
            "copies go %s",
            nbytes >> 10, area_us, address_us, "through the areas" if areas else "by address",
        )  # fmt: skip

    def _native_table(self) -> np.ndarray:
        nb = native_board
        table = np.zeros(nb.FIRST + nb.FIELDS * self.size, np.uint64)
        table[nb.H_SIZE], table[nb.H_RANK] = self.size, self.rank
        table[nb.H_READY], table[nb.H_SIZE_WORD], table[nb.H_DONE] = READY, SIZE, DONE
        table[nb.H_COUNTER_WORDS], table[nb.H_ADDRESS] = PAGE // 8, ADDRESS
        table[nb.H_READV] = syscalls.libc_address("process_vm_readv")
        table[nb.H_WRITEV] = syscalls.libc_address("process_vm_writev")
        table[nb.H_STREAM_BYTES] = self.stream_bytes
        # Small pieces rotate through slots of the areas only where every rank runs native
        # pieces: the Python steps take their data from an area's start.
        if self.native_everywhere:
            table[nb.H_SLOT_BYTES] = self.area_bytes // nb.AREA_SLOTS & ~(LINE - 1)
        self._scratch = np.empty(_NATIVE_SCRATCH_BYTES, np.uint8)
        table[nb.H_SCRATCH] = syscalls.address_of(self._scratch)
        table[nb.H_SCRATCH_BYTES] = self._scratch.nbytes
        table[nb.H_REDUCED] = REDUCED
        table[nb.H_YIELD] = syscalls.libc_address("sched_yield")
        table[nb.H_CLOCK] = syscalls.libc_address("clock_gettime")
        table[nb.H_YIELD_NS] = int(NATIVE_YIELD_SECONDS * 1e9)
        for r in range(self.size):
            at = nb.FIRST + nb.FIELDS * r
            table[at + nb.F_COUNTERS] = syscalls.address_of(self.counters[r])
            table[at + nb.F_AREA0] = syscalls.address_of(self.areas[r][0])
            table[at + nb.F_AREA1] = syscalls.address_of(self.areas[r][1])
        for r, segment in zip(self.others, self._segments, strict=True):
            at = nb.FIRST + nb.FIELDS * r
            table[at + nb.F_SLEEPING] = syscalls.address_of(segment.control) + C_SLEEPING * 8
            table[at + nb.F_PID] = self.transport.peer_pid(r)
        return table

    def native_piece(
        self,
        kind: int,
        src: np.ndarray,
        dst: np.ndarray,
        deadline: float,
        steps: int = native_board.WHOLE_PIECE,
        op: int = 0,
        root: int = -1,
    ) -> None:
        """Run a whole operation as one piece (it fits an area, or goes by address) in
        native calls (:func:`ringcomm.native.board.piece`), taking ``steps`` (bits of
        PUBLISH, COPY, DONE_TOO, FINISH, BY_ADDRESS, GATHER and AWAIT_DONE there; by default publish
        a copy of ``src``, then read it as ``kind`` says into ``dst``). The native call
        spins briefly; longer waits, errors and wake-ups are made here, between calls.

        An operation larger than :attr:`piece_bytes` with IN_PIECES in ``steps`` (an
        all_reduce, broadcast or all_gather through the areas) runs piece after piece, each
        numbered, :attr:`piece_bytes` of ``src`` at a time (the same cut on every rank:
        each piece's size is compared)."""
        table = self.table
        assert table is not None
        nbytes = src.nbytes
        if nbytes > self.piece_bytes and steps & _IN_PIECES:
            step, start, size = max(1, self.piece_bytes // src.itemsize), 0, src.size
            while start < size:
                # Natively, piece after piece, up to one that needs this side (a wait, a
                # wake, an error): that one is carried on here, then the rest natively.
                said = _pieces(
                    table, src[start:], dst[start:], kind, self.count + 1, step, op, root,
                    steps, self._spins,
                )  # fmt: skip
                went, status = divmod(said, _STATUS_SPAN)
                self.count += went
                start += went * step
                if start >= size:
                    return
                self.count = k = self.count + 1
                stop = min(size, start + step)
                part, out = src[start:stop], self._piece_of(kind, src, dst, start, stop)
                self._carry_on(kind, part, out, deadline, steps, op, root, k, status)
                start = stop
            return
        self.count = k = self.count + 1
        status = _piece(table, src, dst, kind, k, nbytes, op, root, steps, self._spins)
        if status == _ALL_TAKEN[steps & _ALL_STEPS]:  # the usual
            return
        self._carry_on(kind, src, dst, deadline, steps, op, root, k, status)

    def _piece_of(
        self, kind: int, src: np.ndarray, dst: np.ndarray, start: int, stop: int
    ) -> np.ndarray:
        """What of ``dst`` piece ``src[start:stop]`` lands in (as native.board._piece_of:
        an all_gather's from rank 0's part of the piece to the last rank's)."""
        if kind != native_board.ALL_GATHER:
            return dst[start:stop]
        stride = (dst.size - src.size) // (self.size - 1)  # as native.board._stride
        return dst[start : start + (self.size - 1) * stride + stop - start]

    def _carry_on(
        self,
        kind: int,
        src: np.ndarray,
        dst: np.ndarray,
        deadline: float,
        steps: int,
        op: int,
        root: int,
        k: int,
        status: int,
    ) -> None:
        """Take the rest of piece ``k``'s ``steps`` (see :meth:`native_piece`) after a
        native call said ``status`` of it: wake, wait (sleeping), read again or raise here,
        call again, until every step is taken."""
        table, nbytes = self.table, src.nbytes
        while True:
            if status & _WAKE:
                self.wake_peers()
            if status & _PUBLISHED:
                steps &= ~_PUBLISH
            if status & _FINISHED:
                steps &= ~_FINISH
            if status & _GATHERED:
                steps &= ~_GATHER
            if status & _AWAITED:
                steps &= ~_AWAIT_DONE
            if not steps & _STEPS_TO_TAKE:
                return
            if status & _BLOCKED:
                self.wait(DONE, k - 2, deadline)
            from_root = kind == native_board.BROADCAST or (
                kind == native_board.BROADCAST_SPLIT and self.rank != root
            )
            if status & (_NOT_READY | _MISMATCH):
                # Wait here (sleeping, peers watched); name a size that differs.
                self.wait_published(k, nbytes, deadline, [root] if from_root else None)
            if status & _NOT_REDUCED:
                self.wait(REDUCED, k, deadline, [root] if from_root else None)
            if status & _UNREAD:
                self._read_again(kind, k, src, dst, root)
            if status & _NOT_DONE:  # (everything else is done: only the wait was left)
                self.wait(DONE, k, deadline)
                status = _AWAITED
                continue
            status = _piece(table, src, dst, kind, k, nbytes, op, root, steps, self._spins)

    def _read_again(self, kind: int, k: int, src: np.ndarray, dst: np.ndarray, root: int) -> None:
        """Read by address what a native call could not, to raise why (or, had the
        system call failed once only, carry on: the call then reads it all again);
        BROADCAST_SPLIT's root writes its share into every reader's buffer so."""
        if kind == native_board.BROADCAST_SPLIT and self.rank == root:
            self._write_shares(k, src)
            return
        if kind in (native_board.BROADCAST, native_board.BROADCAST_SPLIT):
            self.read_published(root, k, dst)
            return
        c = {native_board.ALL_GATHER: src.size, native_board.REDUCE_SCATTER: dst.size}.get(
            kind, dst.size // self.size
        )
        scratch = np.empty(c * src.itemsize, np.uint8)
        for r in self.others:
            if not self.read_published(r, k, scratch) and kind == native_board.ALL_REDUCE_SLICES:
                t = self.transport
                raise TransportError(
                    f"{t.current_op}: rank {r} published no address for an all_reduce that "
                    f"every rank reads by address (rank {t.rank} did)"
                )

    def next(self, deadline: float) -> int:
        """Number the next operation (piece) on the board, once this rank may write its
        area and counters for it: no peer still reads those of two operations back."""
        self.count += 1
        k = self.count
        if k > 2:
            self.wait(DONE, k - 2, deadline)
        return k

    def area(self, rank: int, k: int) -> np.ndarray:
        """``rank``'s area for operation ``k`` (bytes)."""
        return self.areas[rank][k & 1]

    def raise_counter(self, word: int, k: int) -> None:
        """Set this rank's counter ``word`` to ``k`` (after everything written before it)
        and wake the peers that sleep."""
        native_shm.store_fenced(self.counters[self.rank], word, k)
        self.wake_peers()

    def wake_peers(self) -> None:
        """Wake every peer that sleeps (after a fenced store of a counter)."""
        for segment in self._segments:
            wake_owner(segment)

    def publish_address(self, k: int, data: np.ndarray | None) -> None:
        """Say where ``data`` (the whole operation ``k``) lies in this process, for the
        peers to read it by address; None: it goes through the area."""
        address = 0 if data is None else syscalls.address_of(data)
        self.counters[self.rank][ADDRESS + (k & 1)] = address

    def read_published(self, rank: int, k: int, out: np.ndarray) -> bool:
        """Read what ``rank`` published by address for operation ``k`` into ``out``;
        False where it published into its area instead."""
        address = self.counters[rank].item(ADDRESS + (k & 1))
        if not address:
            return False
        try:
            syscalls.read_remote(self.transport.peer_pid(rank), address, out.view(np.uint8))
        except OSError as e:
            t = self.transport
            raise PeerLostError(
                f"{t.current_op}: rank {t.rank} could not read rank {rank}'s memory ({e})"
            ) from None
        return True

    def _write_shares(self, k: int, src: np.ndarray) -> None:
        """BROADCAST_SPLIT's root: write the readers' share of ``src`` (what they do not
        read themselves) where each reader's buffer of operation ``k`` lies."""
        share = src[src.size - src.size // self.size :].view(np.uint8)
        offset = src.nbytes - share.nbytes
        for r in self.others:
            address = self.counters[r].item(ADDRESS + (k & 1))
            t = self.transport
            if not address:
                raise TransportError(
                    f"{t.current_op}: rank {r} published no address for a broadcast that "
                    f"the root writes into (rank {t.rank} is the root)"
                )
            try:
                syscalls.write_remote(t.peer_pid(r), address + offset, share)
            except OSError as e:
                raise PeerLostError(
                    f"{t.current_op}: rank {t.rank} could not write into rank {r}'s memory ({e})"
                ) from None

    def publish_mapping(self, k: int, fd: int, offset: int) -> None:
        """Say that this rank's buffer of operation ``k`` lies at ``offset`` in the
        shared-memory file open as ``fd`` here (fd -1: it does not), for the peers to map
        and read it themselves."""
        words = self.counters[self.rank]
        base = MAPPED + 4 * (k & 1)
        if fd < 0:
            words[base : base + 4] = 0
            return
        st = os.fstat(fd)
        words[base : base + 4] = (fd + 1, st.st_ino, st.st_size, offset)

    def map_published(self, k: int, nbytes: int) -> dict[int, np.ndarray] | None:
        """Every peer's buffer of operation ``k`` (``nbytes`` bytes), mapped from the file it
        published; None if some peer published none or this rank cannot map one (another
        process's fd opens through /proc as its memory reads do: same user, ptrace rules)."""
        found: dict[int, np.ndarray] = {}
        base = MAPPED + 4 * (k & 1)
        for r in self.others:
            fd, inode, size, offset = (int(v) for v in self.counters[r][base : base + 4])
            if not fd or offset + nbytes > size:
                return None
            key = (r, inode, size)
            m = self._mapped.get(key)
            if m is None:
                m = self._map_peer_file(r, fd - 1, inode, size)
                if m is None:
                    return None
            found[r] = np.frombuffer(m, np.uint8, nbytes, offset)
        return found

    def _map_peer_file(self, rank: int, fd: int, inode: int, size: int) -> mmap.mmap | None:
        try:
            own = os.open(f"/proc/{self.transport.peer_pid(rank)}/fd/{fd}", os.O_RDONLY)
        except OSError as e:
            log.debug("rank %d: cannot open rank %d's shared buffer: %s", self.rank, rank, e)
            return None
        try:
            if os.fstat(own).st_ino != inode:  # the fd now names another file
                return None
            m = mmap.mmap(own, size, prot=mmap.PROT_READ)
        except OSError as e:
            log.debug("rank %d: cannot map rank %d's shared buffer: %s", self.rank, rank, e)
            return None
        finally:
            os.close(own)
        if len(self._mapped) >= _MAPPINGS_KEPT * len(self.others):
            oldest = next(iter(self._mapped))
            with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it
                self._mapped.pop(oldest).close()
        self._mapped[(rank, inode, size)] = m
        return m

    def agree_mapped(self, k: int, mapped: bool, deadline: float) -> bool:
        """Whether every rank mapped every peer's buffer of operation ``k`` (``mapped``:
        this one did); a collective step (REDUCED of ``k``)."""
        self.counters[self.rank][MAP_FAILED + (k & 1)] = 0 if mapped else 1
        self.raise_counter(REDUCED, k)
        self.wait(REDUCED, k, deadline)
        word = MAP_FAILED + (k & 1)
        return mapped and not any(self.counters[r].item(word) for r in self.others)

    @staticmethod
    def mapped_size(nbytes: int) -> int:
        """The size to publish and expect for an operation on ``nbytes`` bytes that the
        ranks read from each other's shared-memory files (distinct from a plain one's)."""
        return nbytes | _AS_MAPPED

    @staticmethod
    def compressed_size(nbytes: int, bfloat16: bool) -> int:
        """The size to publish and expect for an operation on ``nbytes`` bytes exchanged
        as 16-bit floats (distinct from a plain one's)."""
        return nbytes | (_AS_BFLOAT16 if bfloat16 else _AS_FLOAT16)

    def publish(self, k: int, nbytes: int, *, done: bool = False) -> None:
        """Raise READY to ``k``: this rank's data of operation ``k``, an operation of
        ``nbytes`` bytes in all, is in its area. ``done``: it reads nothing of operation
        ``k``, not even the peers' counters, so DONE goes up too (one wake-up)."""
        own = self.counters[self.rank]
        own[SIZE + (k & 1)] = nbytes
        if done:
            native_shm.store_release(own, DONE, k)
        self.raise_counter(READY, k)

    def wait_published(
        self, k: int, nbytes: int, deadline: float, ranks: list[int] | None = None
    ) -> None:
        """Until every rank of ``ranks`` (default: every peer) published operation ``k``;
        then check they did so for an operation of ``nbytes`` bytes, as this rank."""
        ranks = self.others if ranks is None else ranks
        self.wait(READY, k, deadline, ranks)
        word = SIZE + (k & 1)
        for r in ranks:
            theirs = self.counters[r].item(word)
            if theirs != nbytes:
                t = self.transport
                raise TransportError(
                    f"{t.current_op}: rank {t.rank} expected {_size_text(nbytes)} from rank "
                    f"{r} on the shared-memory board, got {_size_text(theirs)}: do the "
                    "ranks pass buffers of different sizes, or call different operations?"
                )

    def wait(self, word: int, k: int, deadline: float, ranks: list[int] | None = None) -> None:
        """Until counter ``word`` of every rank in ``ranks`` (default: every peer) reached
        ``k``."""
        counters = self.counters
        pending = [
            r for r in (self.others if ranks is None else ranks) if counters[r].item(word) < k
        ]
        if pending:

            def arrived() -> bool:
                nonlocal pending
                pending = [r for r in pending if native_shm.load_acquire(counters[r], word) < k]
                if pending:
                    self.transport.waiting_for = pending[0]
                    return False
                return True

            def timeout() -> CommTimeoutError:
                t = self.transport
                who = f"rank {pending[0]}" if len(pending) == 1 else f"ranks {pending}"
                return CommTimeoutError(
                    f"{t.current_op} timed out on rank {t.rank} waiting for {who} to "
                    f"{_WHAT[word]} on the shared-memory board (board operation {k})"
                )

            self.transport._wait(arrived, deadline, timeout)

    def close(self) -> None:
        self.table = None  # (its addresses die with the maps)
        self.counters = []
        self.areas = []
        for m in self._mapped.values():
            with contextlib.suppress(BufferError):
                m.close()
        self._mapped = {}
        for m in self._maps:
            with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it
                m.close()
        self._maps = []


def join(transport: ShmTransport, area_bytes: int, agree: Callable[[int], int]) -> Board | None:
    """Make this rank's board and map every peer's; a collective call of every rank.
    ``agree(area_bytes)`` returns the smallest of every rank's area (0: a rank has none; it
    exchanges over the transport). None where any rank could not make its board: the
    caller goes without. Called twice: the second time once every rank has mapped every
    board, so each rank unlinks its own name before any operation runs on it."""
    path = board_path(transport.job_id, transport.comm_id, transport.rank)
    total = PAGE + 2 * area_bytes
    own: mmap.mmap | None = None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:  # (not ours to remove)
        log.warning(_NO_BOARD, e)
    else:
        try:
            os.posix_fallocate(fd, 0, total)  # a full /dev/shm fails here, not with SIGBUS
            own = mmap.mmap(fd, total)
        except OSError as e:
            log.warning(_NO_BOARD, e)
            os.unlink(path)
        finally:
            os.close(fd)
    if own is None:
        agree(0)  # (every rank learns that this one has none)
        return None
    try:
        return _map_all(transport, path, own, area_bytes, agree)
    except BaseException:
        own.close()
        raise
    finally:
        # Every rank has mapped every board (or this one failed): the kernel frees the
        # board with the processes from here on.
        os.unlink(path)


def _map_all(
    transport: ShmTransport,
    path: str,
    own: mmap.mmap,
    area_bytes: int,
    agree: Callable[[int], int],
) -> Board | None:
    control = np.frombuffer(own, np.uint64, PAGE // 8)
    control[C_PID] = os.getpid()
    # A rank that turned reading by address off (a threshold of 0) turns it off for all.
    readable = transport.readable_by_all() and transport.board_by_address_bytes < sys.maxsize
    control[C_READABLE] = int(readable)
    control[C_NATIVE] = int(_runs_native(transport))
    native_shm.store_release(control, C_MAGIC, MAGIC)
    del control
    agreed = agree(area_bytes)
    if not agreed:  # some rank has none
        own.close()
        return None
    total = PAGE + 2 * agreed  # every file holds at least this much
    maps = [own]
    try:
        for r in range(transport.size):
            if r != transport.rank:
                fd = os.open(board_path(transport.job_id, transport.comm_id, r), os.O_RDWR)
                try:
                    maps.append(mmap.mmap(fd, total))
                finally:
                    os.close(fd)
        agree(agreed)  # every rank has mapped every board
    except BaseException:
        for m in maps[1:]:
            m.close()
        raise
    maps.insert(transport.rank, maps.pop(0))  # in rank order
    return Board(transport, agreed, maps)
