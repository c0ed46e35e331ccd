"""The board's native calls (ringcomm.native.board) in one process: a table of three ranks
whose counters and areas are plain arrays, seen from rank 1, the peers played by the test.
Their statuses (blocked, not ready, size mismatch, a sleeping peer) and what they read,
against numpy; the whole collectives on real boards are in test_collectives_processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numba
import numpy as np
import pytest

from data import make_input, reference
from ringcomm import native
from ringcomm.native import board as nb
from ringcomm.transport.shm import syscalls

pytestmark = pytest.mark.skipif(not nb.AVAILABLE, reason="numba's JIT is off")

N, RANK, WORDS, AREA = 3, 1, 64, 4096
READY, SIZE, ADDRESS, DONE, REDUCED = 8, 9, 11, 16, 17  # counter words, as a board's
SCRATCH = 96


class FakeBoard:
    """Three ranks' counters, areas and sleeping flags, and the table over them."""

    def __init__(self) -> None:
        self.counters = [np.zeros(WORDS, np.uint64) for _ in range(N)]
        self.areas = [[np.zeros(AREA, np.uint8) for _ in (0, 1)] for _ in range(N)]
        self.sleeping = [np.zeros(1, np.uint64) for _ in range(N)]
        t = np.zeros(nb.FIRST + nb.FIELDS * N, np.uint64)
        t[nb.H_SIZE], t[nb.H_RANK], t[nb.H_COUNTER_WORDS] = N, RANK, WORDS
        t[nb.H_READY], t[nb.H_SIZE_WORD], t[nb.H_DONE] = READY, SIZE, DONE
        t[nb.H_ADDRESS], t[nb.H_READV] = ADDRESS, syscalls.libc_address("process_vm_readv")
        t[nb.H_WRITEV], t[nb.H_REDUCED] = syscalls.libc_address("process_vm_writev"), REDUCED
        self.scratch = np.zeros(SCRATCH, np.uint8)  # small: reductions take several blocks
        t[nb.H_SCRATCH], t[nb.H_SCRATCH_BYTES] = _address(self.scratch), SCRATCH
        for r in range(N):
            at = nb.FIRST + nb.FIELDS * r
            t[at + nb.F_COUNTERS] = _address(self.counters[r])
            t[at + nb.F_AREA0] = _address(self.areas[r][0])
            t[at + nb.F_AREA1] = _address(self.areas[r][1])
            if r != RANK:
                t[at + nb.F_SLEEPING] = _address(self.sleeping[r])
                t[at + nb.F_PID] = os.getpid()  # the peers' memory is this process's
        self.table = t

    def peer_publishes(self, r: int, k: int, data: np.ndarray, size: int | None = None) -> None:
        self.areas[r][k & 1][: data.nbytes] = data.view(np.uint8)
        self.counters[r][SIZE + (k & 1)] = data.nbytes if size is None else size
        self.counters[r][READY] = k

    def peer_publishes_address(self, r: int, k: int, data: np.ndarray) -> None:
        self.counters[r][ADDRESS + (k & 1)] = _address(data)
        self.peer_publishes(r, k, np.empty(0, np.uint8), data.nbytes)

    def area(self, r: int, k: int, like: np.ndarray) -> np.ndarray:
        return self.areas[r][k & 1][: like.nbytes].view(like.dtype)


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


ALL = nb.PUBLISH | nb.COPY | nb.FINISH


def publish(b: FakeBoard, src: np.ndarray, k: int, steps: int = nb.PUBLISH | nb.COPY) -> int:
    return int(nb.piece(b.table, src, src, nb.ALL_REDUCE, k, src.nbytes, 0, -1, steps, 10))


def finish(
    b: FakeBoard, src: np.ndarray, dst: np.ndarray, kind: int, k: int, nbytes: int,
    op: int = native.SUM, root: int = -1,
) -> int:  # fmt: skip
    return int(nb.piece(b.table, src, dst, kind, k, nbytes, op, root, nb.FINISH, 50))


def test_publish_waits_for_the_area_two_pieces_back_and_says_who_sleeps() -> None:
    b = FakeBoard()
    data = np.arange(10, dtype=np.float32)
    assert publish(b, data, 1) == nb.PUBLISHED
    np.testing.assert_array_equal(b.area(RANK, 1, data), data)
    assert b.counters[RANK][READY] == 1 and b.counters[RANK][SIZE + 1] == data.nbytes
    assert b.counters[RANK][DONE] == 0  # it reads the peers' data: DONE comes later
    # Piece 3 reuses piece 1's area: not while rank 2 has not finished reading piece 1.
    b.counters[0][DONE] = 1
    assert publish(b, data + 1, 3) == nb.BLOCKED
    np.testing.assert_array_equal(b.area(RANK, 3, data), data)  # untouched
    assert b.counters[RANK][READY] == 1
    b.counters[2][DONE] = 1
    b.sleeping[2][0] = 1
    status = publish(b, data + 1, 3, nb.PUBLISH | nb.COPY | nb.DONE_TOO)
    assert status == nb.PUBLISHED | nb.WAKE
    np.testing.assert_array_equal(b.area(RANK, 3, data), data + 1)
    assert b.counters[RANK][READY] == 3 and b.counters[RANK][DONE] == 3  # done: reads nothing
    # A barrier's publish copies nothing.
    b.sleeping[2][0] = 0
    nothing = np.empty(0, np.uint8)
    b.counters[0][DONE] = b.counters[2][DONE] = 2
    assert publish(b, nothing, 4, nb.PUBLISH) == nb.PUBLISHED


@pytest.mark.parametrize("op", [native.SUM, native.PROD, native.MIN, native.MAX])
@pytest.mark.parametrize("dtype", ["int8", "int32", "uint64", "float32", "float64"])
def test_finish_reduces_every_area_in_rank_order(dtype: str, op: int) -> None:
    b = FakeBoard()
    everyone = [make_input(dtype, op, r, 300, seed=5) for r in range(N)]
    mine = everyone[RANK].copy()
    for r in (0, 2):
        b.peer_publishes(r, 1, everyone[r])
    status = nb.piece(b.table, mine, mine, nb.ALL_REDUCE, 1, mine.nbytes, op, -1, ALL, 10)
    assert status == nb.PUBLISHED | nb.FINISHED
    np.testing.assert_array_equal(mine, reference(op, everyone))
    assert b.counters[RANK][DONE] == 1


def test_finish_waits_for_every_peer_and_refuses_another_size() -> None:
    b = FakeBoard()
    mine = np.ones(100, np.float64)
    b.peer_publishes(0, 1, np.full(100, 2.0))
    status = nb.piece(b.table, mine, mine, nb.ALL_REDUCE, 1, mine.nbytes, native.SUM, -1, ALL, 50)
    assert status == nb.PUBLISHED | nb.NOT_READY
    b.peer_publishes(2, 1, np.full(101, 3.0))  # 808 bytes where rank 1 has 800
    assert finish(b, mine, mine, nb.ALL_REDUCE, 1, mine.nbytes) == nb.MISMATCH
    np.testing.assert_array_equal(mine, 1.0)  # nothing read
    assert b.counters[RANK][DONE] == 0
    b.peer_publishes(2, 1, np.full(100, 3.0))
    b.sleeping[0][0] = 1
    status = finish(b, mine, mine, nb.ALL_REDUCE, 1, mine.nbytes)
    assert status == nb.FINISHED | nb.WAKE
    np.testing.assert_array_equal(mine, 6.0)


def test_a_wait_yields_the_core_for_its_time_then_returns() -> None:
    b = FakeBoard()
    t = b.table
    t[nb.H_YIELD] = syscalls.libc_address("sched_yield")
    t[nb.H_CLOCK] = syscalls.libc_address("clock_gettime")
    mine = np.ones(100, np.float64)
    b.peer_publishes(0, 1, np.full(100, 2.0))
    status = nb.piece(b.table, mine, mine, nb.ALL_REDUCE, 1, mine.nbytes, native.SUM, -1, ALL, 0)
    assert status == nb.PUBLISHED | nb.NOT_READY  # (no time to yield: it returned at once)
    t[nb.H_YIELD_NS] = 20_000_000
    began = time.monotonic()
    status = nb.piece(b.table, mine, mine, nb.ALL_REDUCE, 1, mine.nbytes, 0, -1, nb.FINISH, 0)
    assert status == nb.NOT_READY
    assert time.monotonic() - began >= 0.02  # it polled, yielding, for its 20 ms
    # A peer that publishes while the call yields is seen there (the call holds no GIL).
    t[nb.H_YIELD_NS] = 30_000_000_000
    late = threading.Timer(0.05, b.peer_publishes, (2, 1, np.full(100, 3.0)))
    late.start()
    try:
        status = nb.piece(b.table, mine, mine, nb.ALL_REDUCE, 1, mine.nbytes, 0, -1, nb.FINISH, 0)
    finally:
        late.join()
    assert status == nb.FINISHED
    np.testing.assert_array_equal(mine, 6.0)


def test_finish_gathers_scatters_and_broadcasts() -> None:
    b = FakeBoard()
    c = 7
    everyone = [np.arange(N * c, dtype=np.int32) * (r + 1) for r in range(N)]
    k = 1
    mine = everyone[RANK]
    steps = nb.PUBLISH | nb.COPY
    status = nb.piece(b.table, mine, mine, nb.REDUCE_SCATTER, k, 4 * N * c, 0, -1, steps, 10)
    assert status == nb.PUBLISHED
    area = b.area(RANK, k, mine)  # every chunk but its own, which no peer reads
    own = slice(RANK * c, RANK * c + c)
    np.testing.assert_array_equal(area[: own.start], mine[: own.start])
    np.testing.assert_array_equal(area[own.stop :], mine[own.stop :])
    assert not area[own].any()
    for r in (0, 2):
        b.peer_publishes(r, k, everyone[r])
    part = np.zeros(c, np.int32)
    assert finish(b, everyone[RANK], part, nb.REDUCE_SCATTER, k, 4 * N * c) == nb.FINISHED
    np.testing.assert_array_equal(part, sum(everyone)[RANK * c : RANK * c + c])

    k = 2
    pieces = [np.full(c, 10 * r, np.int32) for r in range(N)]
    publish(b, pieces[RANK], k)
    for r in (0, 2):
        b.peer_publishes(r, k, pieces[r])
    out = np.zeros(N * c, np.int32)
    assert finish(b, pieces[RANK], out, nb.ALL_GATHER, k, 4 * c) == nb.FINISHED
    np.testing.assert_array_equal(out, np.concatenate(pieces))

    k = 3  # a broadcast from rank 2: rank 0, which has not published, is not waited for
    b.counters[0][DONE] = b.counters[2][DONE] = 2
    sent = np.arange(c, dtype=np.int32) + 100
    b.peer_publishes(2, k, sent)
    got = np.zeros(c, np.int32)
    assert finish(b, got, got, nb.BROADCAST, k, 4 * c, root=2) == nb.FINISHED
    np.testing.assert_array_equal(got, sent)


def test_a_sleeping_peer_is_woken_before_anyone_waits_for_it() -> None:
    """After publishing, the call returns if a peer sleeps (for the caller to wake it),
    even where it could finish at once; the next call finishes."""
    b = FakeBoard()
    mine = np.ones(50, np.float32)
    for r in (0, 2):
        b.peer_publishes(r, 1, np.full(50, 2.0, np.float32))
    b.sleeping[2][0] = 1
    status = nb.piece(b.table, mine, mine, nb.ALL_REDUCE, 1, mine.nbytes, native.SUM, -1, ALL, 10)
    assert status == nb.PUBLISHED | nb.WAKE
    assert b.counters[RANK][READY] == 1 and b.counters[RANK][DONE] == 0
    b.sleeping[2][0] = 0
    assert finish(b, mine, mine, nb.ALL_REDUCE, 1, mine.nbytes) == nb.FINISHED
    np.testing.assert_array_equal(mine, 5.0)


def in_rank_order(op: int, arrays: list[np.ndarray]) -> np.ndarray:
    """``arrays`` reduced in rank order as the kernels do it (MIN and MAX keep the first of
    a tie, 0.0 against -0.0, where numpy keeps the second)."""
    total = arrays[0].copy()
    for p in arrays[1:]:
        if op == native.SUM:
            total += p
        elif op == native.PROD:
            total *= p
        else:
            takes = (p < total if op == native.MIN else p > total) | (p != p)
            total = np.where(takes, p, total)
    return total


def floats_where_order_shows(dtype: str, count: int) -> list[np.ndarray]:
    """Every rank's input, where reducing out of rank order would show in the bits: 0.0
    against -0.0 (MIN, MAX) at the first element of every slice, and rounding."""
    rng = np.random.default_rng(7)
    everyone = [(rng.standard_normal(count) * 1e3).astype(dtype) for _ in range(N)]
    if dtype == "float32":
        everyone[0][:: count // N], everyone[1][:: count // N] = 0.0, -0.0
    return everyone


@pytest.mark.parametrize("op", [native.SUM, native.PROD, native.MIN, native.MAX])
@pytest.mark.parametrize("dtype", ["int64", "float32"])
def test_one_step_all_reduce_is_in_rank_order_bit_for_bit(dtype: str, op: int) -> None:
    """In place, rank 1 reduces rank 0's area into its own data where that commutes bit for
    bit (SUM, PROD), and copies rank 0's first where it does not (MIN, MAX)."""
    b = FakeBoard()
    everyone = floats_where_order_shows(dtype, 30)
    total = in_rank_order(op, everyone)
    bits = f"u{total.itemsize}"
    mine = everyone[RANK].copy()
    for r in (0, 2):
        b.peer_publishes(r, 1, everyone[r])
    status = nb.piece(b.table, mine, mine, nb.ALL_REDUCE, 1, mine.nbytes, op, -1, ALL, 10)
    assert status == nb.PUBLISHED | nb.FINISHED
    np.testing.assert_array_equal(mine.view(bits), total.view(bits))
    out = np.zeros_like(mine)  # apart: every area in rank order
    b.counters[0][DONE] = b.counters[2][DONE] = 1
    for r in (0, 2):
        b.peer_publishes(r, 3, everyone[r])
    status = nb.piece(b.table, everyone[RANK], out, nb.ALL_REDUCE, 3, out.nbytes, op, -1, ALL, 10)
    assert status == nb.PUBLISHED | nb.FINISHED
    np.testing.assert_array_equal(out.view(bits), total.view(bits))


@pytest.mark.parametrize("op", [native.SUM, native.PROD, native.MIN, native.MAX])
@pytest.mark.parametrize("dtype", ["int64", "float32"])
def test_all_reduce_slices_through_the_areas(dtype: str, op: int) -> None:
    """ALL_REDUCE_SLICES with COPY: publish copies all but this rank's own slice into its
    area (no peer reads it); finish reduces that slice of every area into the buffer and
    into the area's slice, in rank order bit for bit (rank 1 in place reduces rank 0's
    block into its own where that commutes), raising REDUCED; gather copies the peers'
    reduced slices out of their areas once they raised REDUCED, then raises DONE."""
    b = FakeBoard()
    c = 10  # elements a slice
    everyone = floats_where_order_shows(dtype, N * c)
    total = in_rank_order(op, everyone)
    bits = f"u{total.itemsize}"
    mine = everyone[RANK].copy()
    kind, k = nb.ALL_REDUCE_SLICES, 1
    own = slice(RANK * c, RANK * c + c)
    steps = nb.PUBLISH | nb.COPY
    assert nb.piece(b.table, mine, mine, kind, k, mine.nbytes, op, -1, steps, 10) == nb.PUBLISHED
    area = b.area(RANK, k, mine)
    np.testing.assert_array_equal(area[: own.start], mine[: own.start])
    np.testing.assert_array_equal(area[own.stop :], mine[own.stop :])
    assert not area[own].any()  # not copied
    for r in (0, 2):
        b.peer_publishes(r, k, everyone[r])
    steps = nb.FINISH | nb.GATHER
    status = nb.piece(b.table, mine, mine, kind, k, mine.nbytes, op, -1, steps, 10)
    assert status == nb.FINISHED | nb.NOT_REDUCED
    np.testing.assert_array_equal(mine[own].view(bits), total[own].view(bits))
    np.testing.assert_array_equal(area[own].view(bits), total[own].view(bits))  # for the peers
    assert b.counters[RANK][REDUCED] == k and b.counters[RANK][DONE] == 0
    for r in (0, 2):  # the peers reduced their slices into their areas
        theirs = slice(r * c, r * c + c)
        b.area(r, k, mine)[theirs] = total[theirs]
        b.counters[r][REDUCED] = k
    status = nb.piece(b.table, mine, mine, kind, k, mine.nbytes, op, -1, nb.GATHER, 10)
    assert status == nb.GATHERED
    np.testing.assert_array_equal(mine.view(bits), total.view(bits))
    assert b.counters[RANK][DONE] == k


def test_pieces_go_one_after_another_up_to_one_that_cannot() -> None:
    """pieces() takes piece after piece in one call while each takes every step, and says
    how many went and what stopped the next (its caller carries that one on, then calls
    again from the one after it)."""
    b = FakeBoard()
    sent = np.arange(25, dtype=np.float64) + 1
    got = np.zeros_like(sent)
    step = 10  # pieces of 10, 10 and 5 elements, numbered 1, 2, 3
    for k, lo in ((1, 0), (2, 10)):
        b.peer_publishes(0, k, sent[lo : lo + step])
    said = nb.pieces(b.table, got, got, nb.BROADCAST, 1, step, 0, 0, nb.FINISH, 10)
    assert divmod(said, nb.STATUS_SPAN) == (2, nb.NOT_READY)
    np.testing.assert_array_equal(got[:20], sent[:20])
    assert not got[20:].any() and b.counters[RANK][DONE] == 2
    rest = got[20:]
    b.peer_publishes(0, 3, sent[20:], size=8 * 4)  # the root's last piece is shorter
    said = nb.pieces(b.table, rest, rest, nb.BROADCAST, 3, step, 0, 0, nb.FINISH, 10)
    assert divmod(said, nb.STATUS_SPAN) == (0, nb.MISMATCH) and not rest.any()
    b.peer_publishes(0, 3, sent[20:])
    b.sleeping[2][0] = 1  # read, but a peer sleeps: the caller wakes it
    said = nb.pieces(b.table, rest, rest, nb.BROADCAST, 3, step, 0, 0, nb.FINISH, 10)
    assert divmod(said, nb.STATUS_SPAN) == (0, nb.FINISHED | nb.WAKE)
    np.testing.assert_array_equal(got, sent)
    b.sleeping[2][0] = 0

    b = FakeBoard()  # every piece through: an all_reduce of two pieces
    everyone = [np.arange(20, dtype=np.int64) * (r + 1) for r in range(N)]
    mine = everyone[RANK].copy()
    for r in (0, 2):
        for k, lo in ((1, 0), (2, step)):
            b.peer_publishes(r, k, everyone[r][lo : lo + step])
    said = nb.pieces(b.table, mine, mine, nb.ALL_REDUCE, 1, step, native.SUM, -1, ALL, 10)
    assert said == 2 * nb.STATUS_SPAN
    np.testing.assert_array_equal(mine, sum(everyone))
    assert b.counters[RANK][READY] == 2 and b.counters[RANK][DONE] == 2


@pytest.mark.parametrize("in_place", [False, True])
def test_all_gather_in_pieces_lands_each_part_where_its_rank_goes(in_place: bool) -> None:
    """An all_gather in pieces: piece j of every rank's input lands at j in that rank's
    part of the output, also when the call stops at a piece (a peer not there yet) and
    the next call goes on from there, with the input and output from that piece on."""
    b = FakeBoard()
    c, step = 23, 10  # pieces of 10, 10 and 3 elements, numbered 1, 2, 3
    everyone = [np.arange(c, dtype=np.int32) + 100 * (r + 1) for r in range(N)]
    out = np.zeros(N * c, np.int32)
    mine = out[RANK * c : (RANK + 1) * c] if in_place else everyone[RANK].copy()
    mine[...] = everyone[RANK]
    for k, lo in ((1, 0), (2, step)):
        for r in (0, 2):
            b.peer_publishes(r, k, everyone[r][lo : lo + step])
    said = nb.pieces(b.table, mine, out, nb.ALL_GATHER, 1, step, 0, -1, ALL, 10)
    assert divmod(said, nb.STATUS_SPAN) == (2, nb.BLOCKED)  # piece 3 waits for DONE 1
    parts = out.reshape(N, c)
    for r in range(N):
        np.testing.assert_array_equal(parts[r, :20], everyone[r][:20], err_msg=f"rank {r}")
    if not in_place:
        assert not parts[:, 20:].any()
    for r in (0, 2):
        b.counters[r][DONE] = 2
        b.peer_publishes(r, 3, everyone[r][20:])
    start = 2 * step  # the caller goes on from the piece that stopped
    said = nb.pieces(b.table, mine[start:], out[start:], nb.ALL_GATHER, 3, step, 0, -1, ALL, 10)
    assert said == nb.STATUS_SPAN
    np.testing.assert_array_equal(out, np.concatenate(everyone))


needs_readv = pytest.mark.skipif(
    not syscalls.libc_address("process_vm_readv"), reason="no process_vm_readv in this libc"
)


@needs_readv
def test_broadcast_and_all_gather_read_a_peer_by_address_where_it_published_one() -> None:
    b = FakeBoard()
    theirs = np.arange(3000, dtype=np.float64)  # 24,000 bytes: more than an area
    b.area(0, 1, np.empty(AREA, np.uint8))[...] = 7  # what a read of the area would give
    b.peer_publishes_address(0, 1, theirs)
    got = np.zeros_like(theirs)
    assert finish(b, got, got, nb.BROADCAST, 1, got.nbytes, root=0) == nb.FINISHED
    np.testing.assert_array_equal(got, theirs)
    assert b.counters[RANK][DONE] == 1
    # all_gather in place: rank 0 by address, rank 2 through its area, rank 1 its own.
    c = 500
    out = np.full(N * c, -1.0, np.float32)
    mine = out[RANK * c : (RANK + 1) * c]
    mine[...] = 1.0
    first = np.full(c, 10.0, np.float32)
    b.peer_publishes_address(0, 2, first)
    b.peer_publishes(2, 2, np.full(c, 30.0, np.float32))
    assert finish(b, mine, out, nb.ALL_GATHER, 2, mine.nbytes) == nb.FINISHED
    np.testing.assert_array_equal(out, np.repeat(np.array([10.0, 1.0, 30.0], np.float32), c))


@numba.njit
def _copy(dst: np.ndarray, src: np.ndarray) -> None:
    nb._copy(dst, src)


@numba.njit
def _copy_streaming(dst: np.ndarray, src: np.ndarray) -> None:
    nb._copy_streaming(dst, src)


@pytest.mark.parametrize("copy", [_copy, _copy_streaming], ids=["plain", "streaming"])
def test_a_copy_writes_every_byte_and_nothing_beyond(
    copy: numba.core.dispatcher.Dispatcher,
) -> None:
    """Every length up to three lines from every offset within a line: the memcpy before
    the first line, the lines (64-byte loads and stores, streamed or not) and the memcpy
    after them."""
    src = np.arange(256, dtype=np.uint8) ^ 0x5A
    for start in range(64):
        for count in [*range(200), 4097]:
            where = np.full(start + count + 128 + 64, 0xEE, np.uint8)
            dst = where[start + 64 : start + 64 + count]
            data = np.resize(src, count)
            copy(dst, data)
            np.testing.assert_array_equal(dst, data, err_msg=f"start {start} count {count}")
            assert (where[: start + 64] == 0xEE).all()
            assert (where[start + 64 + count :] == 0xEE).all()


@needs_readv
@pytest.mark.parametrize("in_place", [False, True])
def test_all_gather_streams_its_output_from_the_size_the_table_says(in_place: bool) -> None:
    """At and above H_STREAM_BYTES of data on the host, all_gather writes its own part and
    what it reads by address with streaming stores, through the scratch (several blocks
    here), at element offsets no line boundary meets; below it, with plain copies."""
    c = 251  # float64: 2,008 bytes, 21 scratch blocks of 96
    everyone = [np.arange(c, dtype=np.float64) * (r + 1) + 0.5 for r in range(N)]
    host_bytes = N * N * c * 8 + (0 if in_place else N * c * 8)
    for threshold, k in ((host_bytes, 1), (host_bytes + 1, 2)):
        b = FakeBoard()
        b.table[nb.H_STREAM_BYTES] = threshold
        b.counters[RANK][DONE] = k - 1
        whole = np.full(N * c + 1, -1.0)
        out = whole[1:]  # 8 bytes past a line boundary, if numpy aligned ``whole``
        mine = out[RANK * c : (RANK + 1) * c] if in_place else everyone[RANK].copy()
        if in_place:
            mine[...] = everyone[RANK]
        b.peer_publishes_address(0, k, everyone[0])
        b.peer_publishes_address(2, k, everyone[2])
        assert finish(b, mine, out, nb.ALL_GATHER, k, mine.nbytes) == nb.FINISHED
        np.testing.assert_array_equal(out, np.concatenate(everyone), err_msg=f"{threshold}")
        assert whole[0] == -1.0
        streamed = threshold <= host_bytes  # a streamed read leaves its last block there
        assert b.scratch.any() == streamed, f"{threshold} against {host_bytes} bytes on the host"


@needs_readv
def test_a_failed_read_by_address_is_unread_with_nothing_raised() -> None:
    b = FakeBoard()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid no process has now
    b.table[nb.FIRST + nb.FIELDS * 0 + nb.F_PID] = gone.pid
    theirs = np.ones(100, np.float32)
    b.peer_publishes_address(0, 1, theirs)
    got = np.zeros_like(theirs)
    assert finish(b, got, got, nb.BROADCAST, 1, got.nbytes, root=0) == nb.UNREAD
    assert b.counters[RANK][DONE] == 0  # the caller raises the error: no peer goes on


def test_publish_by_address_then_await_every_reader() -> None:
    b = FakeBoard()
    data = np.arange(10_000, dtype=np.float32)  # more than an area: only its address goes
    steps = nb.PUBLISH | nb.BY_ADDRESS | nb.DONE_TOO | nb.AWAIT_DONE
    status = nb.piece(b.table, data, data, nb.BROADCAST, 1, data.nbytes, 0, RANK, steps, 10)
    assert status == nb.PUBLISHED | nb.NOT_DONE
    assert b.counters[RANK][ADDRESS + 1] == _address(data)
    assert b.counters[RANK][READY] == 1 and b.counters[RANK][DONE] == 1
    assert not b.areas[RANK][1].any()  # nothing copied
    b.counters[0][DONE] = 1
    await_only = nb.AWAIT_DONE
    assert nb.piece(b.table, data, data, nb.BROADCAST, 1, 0, 0, RANK, await_only, 10) == nb.NOT_DONE
    b.counters[2][DONE] = 1
    assert nb.piece(b.table, data, data, nb.BROADCAST, 1, 0, 0, RANK, await_only, 10) == nb.AWAITED
    # Through the area again: the address word says so (0) to the readers.
    b.counters[0][DONE] = b.counters[2][DONE] = 1
    small = np.ones(4, np.float32)
    assert publish(b, small, 3, nb.PUBLISH | nb.COPY | nb.DONE_TOO) == nb.PUBLISHED
    assert b.counters[RANK][ADDRESS + 1] == 0


SPLIT_ROOT = nb.PUBLISH | nb.BY_ADDRESS | nb.DONE_TOO | nb.FINISH | nb.AWAIT_DONE
SPLIT_READER = nb.PUBLISH | nb.BY_ADDRESS | nb.FINISH | nb.GATHER


@needs_readv
def test_split_broadcast_root_writes_the_last_share_into_every_reader() -> None:
    b = FakeBoard()
    data = np.arange(3001, dtype=np.float64)  # 3001 // 3 = 1000: the readers read 2001
    head = 2001
    readers = {r: np.full(3001, -1.0) for r in (0, 2)}
    status = nb.piece(
        b.table, data, data, nb.BROADCAST_SPLIT, 1, data.nbytes, 0, RANK, SPLIT_ROOT, 10
    )
    assert status == nb.PUBLISHED | nb.NOT_READY  # no reader has said where its buffer is
    assert b.counters[RANK][ADDRESS + 1] == _address(data) and b.counters[RANK][DONE] == 1
    b.peer_publishes_address(0, 1, readers[0])
    finish_and_await = nb.FINISH | nb.AWAIT_DONE
    status = nb.piece(
        b.table, data, data, nb.BROADCAST_SPLIT, 1, data.nbytes, 0, RANK, finish_and_await, 10
    )
    assert status == nb.NOT_READY and b.counters[RANK][REDUCED] == 0
    assert (readers[0] == -1).all()  # nothing written before every reader is there
    b.peer_publishes_address(2, 1, readers[2])
    status = nb.piece(
        b.table, data, data, nb.BROADCAST_SPLIT, 1, data.nbytes, 0, RANK, finish_and_await, 10
    )
    assert status == nb.FINISHED | nb.NOT_DONE
    assert b.counters[RANK][REDUCED] == 1  # every reader's share is written
    for buf in readers.values():
        np.testing.assert_array_equal(buf[head:], data[head:])
        assert (buf[:head] == -1).all()  # the reader's own part
    b.counters[0][DONE] = b.counters[2][DONE] = 1
    status = nb.piece(b.table, data, data, nb.BROADCAST_SPLIT, 1, 0, 0, RANK, nb.AWAIT_DONE, 10)
    assert status == nb.AWAITED


@needs_readv
def test_split_broadcast_reader_reads_the_rest_then_waits_for_the_root() -> None:
    b = FakeBoard()
    theirs = np.arange(3001, dtype=np.float64)
    head = 2001
    got = np.full(3001, -1.0)
    b.peer_publishes_address(0, 1, theirs)
    status = nb.piece(b.table, got, got, nb.BROADCAST_SPLIT, 1, got.nbytes, 0, 0, SPLIT_READER, 10)
    assert status == nb.PUBLISHED | nb.FINISHED | nb.NOT_REDUCED
    assert b.counters[RANK][ADDRESS + 1] == _address(got)  # where the root writes
    assert b.counters[RANK][READY] == 1 and b.counters[RANK][DONE] == 1  # done reading it
    np.testing.assert_array_equal(got[:head], theirs[:head])
    assert (got[head:] == -1).all()
    got[head:] = theirs[head:]  # the root writes the rest, then says so
    b.counters[0][REDUCED] = 1
    status = nb.piece(b.table, got, got, nb.BROADCAST_SPLIT, 1, 0, 0, 0, nb.GATHER, 10)
    assert status == nb.GATHERED


@needs_readv
def test_a_failed_split_broadcast_write_is_unread_with_nothing_raised() -> None:
    b = FakeBoard()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    b.table[nb.FIRST + nb.FIELDS * 2 + nb.F_PID] = gone.pid
    data = np.ones(300, np.float32)
    for r in (0, 2):
        b.peer_publishes_address(r, 1, np.zeros(300, np.float32))
    status = nb.piece(
        b.table, data, data, nb.BROADCAST_SPLIT, 1, data.nbytes, 0, RANK, SPLIT_ROOT, 10
    )
    assert status == nb.PUBLISHED | nb.UNREAD
    assert b.counters[RANK][REDUCED] == 0  # the caller raises the error


@needs_readv
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("dtype", ["int32", "float64"])
def test_reduce_scatter_reads_peers_by_address_block_by_block(dtype: str, in_place: bool) -> None:
    b = FakeBoard()
    c = 50  # elements a rank; the scratch holds a few at a time
    everyone = [make_input(dtype, native.SUM, r, N * c, seed=7) for r in range(N)]
    b.peer_publishes_address(0, 1, everyone[0])
    b.peer_publishes(2, 1, everyone[2])
    mine = everyone[RANK].copy()
    out = mine[RANK * c : (RANK + 1) * c] if in_place else np.zeros(c, dtype)
    status = finish(b, mine, out, nb.REDUCE_SCATTER, 1, mine.nbytes)
    assert status == nb.FINISHED
    want = reference(native.SUM, everyone)[RANK * c : (RANK + 1) * c]
    np.testing.assert_array_equal(out, want)


@needs_readv
@pytest.mark.parametrize("dtype", ["int8", "float64"])
def test_all_to_all_takes_its_chunk_of_every_peer_out_of_its_area_or_where_it_lies(
    dtype: str,
) -> None:
    b = FakeBoard()
    c = 5
    everyone = [make_input(dtype, native.SUM, r, N * c, seed=8) for r in range(N)]
    mine = everyone[RANK]
    status = nb.piece(
        b.table, mine, mine, nb.ALL_TO_ALL, 1, mine.nbytes, 0, -1, nb.PUBLISH | nb.COPY, 10
    )
    assert status == nb.PUBLISHED
    area = b.area(RANK, 1, mine)  # every chunk but its own, which no peer reads
    own = slice(RANK * c, (RANK + 1) * c)
    np.testing.assert_array_equal(area[: own.start], mine[: own.start])
    np.testing.assert_array_equal(area[own.stop :], mine[own.stop :])
    assert not area[own].any()
    b.peer_publishes_address(0, 1, everyone[0])  # rank 0 by address, rank 2 in its area
    b.peer_publishes(2, 1, everyone[2])
    out = np.zeros(N * c, dtype)
    assert finish(b, mine, out, nb.ALL_TO_ALL, 1, mine.nbytes) == nb.FINISHED
    want = np.concatenate([everyone[r][own] for r in range(N)])
    np.testing.assert_array_equal(out, want)
    assert b.counters[RANK][DONE] == 1
