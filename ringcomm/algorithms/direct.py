"""Collectives run directly on the shared-memory board: one or two steps whatever n is.

For a communicator whose ranks all share this host over the shared-memory transport (see
:mod:`ringcomm.transport.shm.board` for the board and its counters). Each operation is cut
into pieces that fit an area; per piece:

- all_reduce: every rank publishes its piece. Small pieces: every rank reduces the whole
  piece from every area, in rank order, so every rank gets the same bits (one step). Larger
  ones: rank r reduces slice r of every area into its own area, publishes it, and every
  rank copies the n reduced slices (two steps, each rank reducing 1/n).
- reduce_scatter: every rank publishes its input; rank r reduces chunk r from every area.
- all_gather: every rank publishes its input; every rank copies every area.
- broadcast: the root publishes; the others copy.
- reduce: as all_reduce's two steps, with only the root copying the reduced slices (small
  pieces: the root reduces every area).
- all_to_all: every rank publishes its input; rank r copies chunk r from every area.
- barrier: every rank raises READY and waits for every peer's.

By address: where every rank may read every other's memory (and none turned it off), from
rank 0's ``RINGCOMM_SHM_BOARD_BY_ADDRESS_BYTES`` up, a rank publishes where its data lies
instead of a copy, and the others read it there in one copy (``process_vm_readv``):
broadcast and all_gather read the owner's data, reduce_scatter and all_to_all its chunk of
every peer's input, and all_reduce from 64 KiB reduces its slice of every rank's buffer in
place, then reads the others' reduced slices (all but broadcast and all_gather only where
every rank runs native calls). The owner waits until every reader is done before its
buffer may change.

An operation that fits one area (a reduce: below the one-step size), or goes by address,
runs as one piece in native calls (:meth:`Board.native_piece`), the same protocol without
the interpreter between its steps; an all_reduce from the one-step size, a broadcast up
to ``BROADCAST_IN_PIECES_BYTES`` and an all_gather larger than a piece (at n=2 up to
``ALLGATHER_IN_PIECES_BYTES_N2``) where the cores share a cache, run through the areas in
native pieces of :attr:`Board.piece_bytes` (every rank runs native calls).

Every function takes the point-to-point algorithm to fall back on: it runs instead when the
communicator cannot have a board (its ranks span hosts, another transport, /dev/shm full
on some rank; every rank decides alike).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ringcomm import native
from ringcomm.algorithms import recursive_doubling
from ringcomm.algorithms.context import OpContext
from ringcomm.algorithms.schedule import chunk_bounds
from ringcomm.native import board as native_board

if TYPE_CHECKING:
    from ringcomm.transport.shm.board import Board

# all_reduce and reduce pieces below this reduce every area on every rank (one step, n-1
# reductions of the whole piece); from it up each rank reduces its slice (two steps).
# Measured: see ringcomm.algorithms.choice.
ONE_STEP_BELOW_BYTES = 64 << 10
NOTHING = np.empty(0, np.uint8)  # a barrier's data
# Where copies go through the areas (Board.area_copies), broadcasts up to this size go
# through them piece after piece (the root fills one area while the readers empty the
# other). n=2, 2026-12-06, AMD EPYC, against by address, back to back | barrier before
# each, us: 1 MiB 39 vs 78-80 | 49-56 vs 78, 2 MiB 71 vs 152 | 86 vs 147; but 4 MiB
# 147-151 vs 155-233 | 156-200 vs 127-211 and 16 MiB 1056 vs 828 | 901 vs 865: a read
# of a buffer on huge pages is as fast.
BROADCAST_IN_PIECES_BYTES = 2 << 20
# Where copies go through the areas and every rank runs native calls, all_gather inputs
# larger than a piece go through them piece after piece too: three copies in cache beat two
# where one is a read by address, which pins the pages one by one. 2026-12-07, one launch
# switching between them every 15 calls, median us by address | in pieces: n=2 out of
# place 2 MiB 91 | 51, 4 MiB 176 | 99, 8 MiB 316 | 238, 16 MiB 995 | 813; n=3 16 MiB 2518
# | 1914, 64 MiB 10281 | 7801; n=4 (2 cores) 4 MiB 560 | 282, 64 MiB 11902 | 9464, in
# place 64 MiB 9156 | 7789; n=8 32 MiB 13329 | 10429. But at n=2 in place, the one read
# of the peer's part (its output: on huge pages) wins from 8 MiB of input: 16 MiB 260 |
# 468, 64 MiB 2122 | 3615 (and 32 MiB out of place 2241 | 2323); and at 4 MiB of input
# it went either way from launch to launch (in place 8 MiB 192 | 157, 152 | 157, 125 |
# 227; out of place 316 | 238, 290 | 287). Hence at n=2 up to this input (in place 4 MiB
# 136 | 78 and 138 | 75, out of place 176 | 99 and 187 | 137), with more ranks at every
# size.
ALLGATHER_IN_PIECES_BYTES_N2 = 2 << 20
# A broadcast by address splits each reader's copy with the root (which otherwise waits
# idle) where the root's share of it is at least this large: it writes each reader's share
# in a system call of its own. n=2, 2026-12-07, against the reader copying it all, us: with
# the cores sharing a cache, 4 MiB 88 against 153, 16 MiB 539 against 952; apart, 16 KiB
# 5.1 against 5.6, 64 KiB 6.6 against 8.4, 1 MiB 39 against 74.
BROADCAST_SPLIT_SHARE_BYTES = 8 << 10
# Steps of a native piece (see Board.native_piece): all of them; publish only (a rank that
# reads nothing, its DONE raised with it); read only (a reader of the root's area).
_WHOLE_PIECE = native_board.WHOLE_PIECE
_PUBLISH_ONLY = native_board.PUBLISH | native_board.COPY | native_board.DONE_TOO
_FINISH_ONLY = native_board.FINISH
# By address: the root says where its data lies, raises DONE (it reads nothing) and waits
# until every reader is done with it; all_gather's and reduce_scatter's ranks read each
# other's inputs so.
_PUBLISH_ADDRESS = (
    native_board.PUBLISH | native_board.BY_ADDRESS | native_board.DONE_TOO | native_board.AWAIT_DONE
)
_SLICES_BY_ADDRESS = (
    native_board.PUBLISH
    | native_board.BY_ADDRESS
    | native_board.FINISH
    | native_board.GATHER
    | native_board.AWAIT_DONE
)
# all_reduce's two steps through the areas: the reduced slices are read out of them too.
_SLICES_THROUGH_AREAS = (
    native_board.PUBLISH
    | native_board.COPY
    | native_board.FINISH
    | native_board.GATHER
    | native_board.IN_PIECES
)
# A broadcast by address whose root writes a share of every reader's copy
# (native_board.BROADCAST_SPLIT): the root publishes where its data lies, writes, then
# waits as _PUBLISH_ADDRESS; a reader publishes where its buffer lies, reads the rest,
# then waits for the root's writes (GATHER).
_SPLIT_ROOT = _PUBLISH_ADDRESS | native_board.FINISH
_SPLIT_READER = (
    native_board.PUBLISH | native_board.BY_ADDRESS | native_board.FINISH | native_board.GATHER
)
_EXCHANGE_BY_ADDRESS = (
    native_board.PUBLISH | native_board.BY_ADDRESS | native_board.FINISH | native_board.AWAIT_DONE
)


def board(ctx: OpContext) -> Board | None:
    """The communicator's board (made on first use, by every rank alike), or None where it
    cannot have one."""
    transport: Any = ctx.transport
    state = getattr(transport, "board", None)
    if state is not None or not getattr(transport, "board_possible", False):
        return state  # type: ignore[no-any-return]
    from ringcomm.transport.shm import board as shm_board

    def agree(area_bytes: int) -> int:
        # The smallest area of all ranks (0: some rank has none). The exchange goes over
        # the transport with this operation's tags; the direct algorithms send nothing, and
        # a fallback's messages follow on each pair in order.
        v = np.array([area_bytes], np.int64)
        recursive_doubling.allreduce(ctx.part(ctx.seq, ctx.kind, native.MIN, False), v)
        return int(v[0])

    made = shm_board.join(transport, transport.board_area_bytes, agree)
    if made is None:
        transport.board_possible = False
        return None
    try:
        made.settle_copies(
            transport.board_shared_cache,
            transport.board_area_copies,
            ctx.deadline,
            functools.partial(_probe_broadcast, made, deadline=ctx.deadline),
        )
    except BaseException:
        made.close()
        raise
    transport.board = made
    return made


def _probe_broadcast(b: Board, data: np.ndarray, deadline: float) -> None:
    """A broadcast of ``data`` from rank 0 in the native piece the board now chooses, for
    its copy probe (see Board.settle_copies)."""
    kind, steps = broadcast_piece(b, data, 0, False)
    b.native_piece(kind, data, data, deadline, steps=steps, root=0)


def _native(b: Board, data: np.ndarray, bfloat16: bool, op: int, any_size: bool = False) -> bool:
    """Whether an operation on ``data`` (the whole input) runs in native calls
    (:meth:`Board.native_piece`): it fits an area (or ``any_size``: it goes by address, or
    an area at a time), and the native kernels take its dtype and reduction ``op`` (-1: it
    reduces nothing; not 16-bit floats, bool or the bitwise ops: those take Python steps)."""
    return (
        b.table is not None
        and (any_size or data.nbytes <= b.area_bytes)
        and data.dtype in native_board.DTYPES
        and not bfloat16
        and (op < 0 or op in native_board.OPS)
    )


# The native piece of each operation: (kind, steps), steps 0 where the operation takes the
# board's Python steps instead. The functions below run it, and so does the
# communicator's quick path for blocking calls (Communicator._run_piece).
NO_PIECE = (0, 0)
BARRIER_PIECE = (native_board.BARRIER, native_board.PUBLISH | native_board.FINISH)


def allreduce_piece(b: Board, data: np.ndarray, op: int, bfloat16: bool) -> tuple[int, int]:
    """The native piece of an all_reduce of ``data``, or none. Below
    ``ONE_STEP_BELOW_BYTES``: one step. From it, where every rank runs native calls, two
    (every rank reduces its slice of every buffer, then copies the others' reduced slices):
    where the cores share no cache, by address from ``size`` times
    :attr:`~Board.by_address_bytes` (where every rank may read every other's memory);
    else through the areas, piece after piece (n=2, 2026-12-06, against by address: 4 MiB
    259 against 401 us, 16 MiB 1591 against 2493; n=4 1 MiB 203 against 456)."""
    if data.nbytes < ONE_STEP_BELOW_BYTES:
        if _native(b, data, bfloat16, op):
            return native_board.ALL_REDUCE, _WHOLE_PIECE
        return NO_PIECE
    # (where some rank runs Python steps, every rank takes them: the same two steps)
    if not b.native_everywhere or not _native(b, data, bfloat16, op, any_size=True):
        return NO_PIECE
    if b.by_address and not b.shared_cache and data.nbytes >= b.size * b.by_address_bytes:
        return native_board.ALL_REDUCE_SLICES, _SLICES_BY_ADDRESS
    return native_board.ALL_REDUCE_SLICES, _SLICES_THROUGH_AREAS


def _gathers_by_address(b: Board, data: np.ndarray) -> bool:
    """Whether broadcast data or an all_gather input is read where it lies."""
    return b.by_address and data.nbytes >= b.read_in_place_bytes


def allgather_piece(b: Board, inp: np.ndarray, bfloat16: bool) -> tuple[int, int]:
    """The native piece of an all_gather of ``inp`` (in place too: it lands on itself):
    where copies go through the areas (:attr:`~Board.area_copies`), through them in pieces
    (see ``ALLGATHER_IN_PIECES_BYTES_N2``) or in one; else by address from
    :attr:`~Board.read_in_place_bytes`, or through an area."""
    if (
        b.area_copies
        and b.piece_bytes < inp.nbytes
        and (b.size > 2 or inp.nbytes <= ALLGATHER_IN_PIECES_BYTES_N2)
        and b.native_everywhere
        and _native(b, inp, bfloat16, -1, any_size=True)
    ):
        return native_board.ALL_GATHER, _WHOLE_PIECE | native_board.IN_PIECES
    by_address = _gathers_by_address(b, inp)
    if not _native(b, inp, bfloat16, -1, by_address):
        return NO_PIECE
    return native_board.ALL_GATHER, _EXCHANGE_BY_ADDRESS if by_address else _WHOLE_PIECE


def reduce_scatter_piece(
    b: Board, out: np.ndarray, inp: np.ndarray, op: int, bfloat16: bool
) -> tuple[int, int]:
    """The native piece of a reduce_scatter of ``inp`` into ``out``. By address (every
    rank reads its chunk of every peer's input where it lies) only where every rank runs
    native calls (the Python steps read the areas), and not below
    :attr:`~Board.read_in_place_bytes` of input: where copies go through the areas, up to
    512 KiB goes through them (2026-12-06, AMD EPYC, in one launch, through the areas vs
    by address, us: n=2 64 KiB 6.1-6.4 vs 9.0-9.3, 256 KiB 11.5-14.1 vs 17.4-20.4,
    512 KiB 21-25 vs 32; n=4 on 2 cores 64 KiB 26-72 vs 47-128, 512 KiB 70-79 vs
    110-122; but n=2 1 MiB 101-107 vs 67-69 in alternating launches)."""
    if b.area_bytes < b.size * inp.itemsize:
        return NO_PIECE
    by_address = (
        b.by_address
        and b.native_everywhere
        and out.nbytes >= b.by_address_bytes
        and inp.nbytes >= b.read_in_place_bytes
    )
    if not _native(b, inp, bfloat16, op, by_address):
        return NO_PIECE
    return native_board.REDUCE_SCATTER, _EXCHANGE_BY_ADDRESS if by_address else _WHOLE_PIECE


def alltoall_piece(b: Board, inp: np.ndarray) -> tuple[int, int]:
    """The native piece of an all_to_all of ``inp``: by address (every rank
    reads its chunk of every peer's input where it lies, straight into its output) where
    reduce_scatter goes so, from :attr:`~Board.by_address_bytes` a chunk and
    :attr:`~Board.read_in_place_bytes` of input; else through an area where the input fits
    one."""
    by_address = (
        b.by_address
        and b.native_everywhere
        and inp.nbytes // b.size >= b.by_address_bytes
        and inp.nbytes >= b.read_in_place_bytes
    )
    if not _native(b, inp, False, -1, by_address):  # (it copies: 16-bit floats are uint16)
        return NO_PIECE
    return native_board.ALL_TO_ALL, _EXCHANGE_BY_ADDRESS if by_address else _WHOLE_PIECE


def broadcast_piece(b: Board, data: np.ndarray, root: int, bfloat16: bool) -> tuple[int, int]:
    """The native piece of a broadcast of ``data`` from ``root``, on this rank: where
    copies go through the areas (:attr:`~Board.area_copies`), up to
    ``BROADCAST_IN_PIECES_BYTES`` through them piece after piece; else by address from
    :attr:`~Board.read_in_place_bytes`, or through an area."""
    if (
        b.area_copies
        and data.nbytes <= BROADCAST_IN_PIECES_BYTES
        and b.native_everywhere
        and _native(b, data, bfloat16, -1, any_size=True)
    ):
        steps = _PUBLISH_ONLY if b.rank == root else _FINISH_ONLY
        return native_board.BROADCAST, steps | native_board.IN_PIECES
    by_address = _gathers_by_address(b, data)
    if not _native(b, data, bfloat16, -1, by_address):
        return NO_PIECE
    if by_address and data.nbytes // b.size >= BROADCAST_SPLIT_SHARE_BYTES and b.writes_by_address:
        steps = _SPLIT_ROOT if b.rank == root else _SPLIT_READER
        return native_board.BROADCAST_SPLIT, steps
    if b.rank != root:
        return native_board.BROADCAST, _FINISH_ONLY
    return native_board.BROADCAST, _PUBLISH_ADDRESS if by_address else _PUBLISH_ONLY


def reduce_piece(b: Board, data: np.ndarray, root: int, op: int, bfloat16: bool) -> tuple[int, int]:
    """The native piece of a one-step reduce of ``data`` to ``root``, on this rank."""
    if data.nbytes >= ONE_STEP_BELOW_BYTES or not _native(b, data, bfloat16, op):
        return NO_PIECE
    return native_board.REDUCE, _WHOLE_PIECE if b.rank == root else _PUBLISH_ONLY


def _view(area: np.ndarray, dtype: np.dtype, count: int) -> np.ndarray:
    return area[: count * dtype.itemsize].view(dtype)


def _own_pieces(
    b: Board, data: np.ndarray, deadline: float
) -> Iterator[tuple[int, np.ndarray, int]]:
    """Where each piece of ``data`` that fits an area starts, the piece, and its number,
    once copied into this rank's area (one empty piece for empty data, so sizes are still
    compared)."""
    step = max(1, b.area_bytes // data.itemsize)
    for start in range(0, max(1, data.size), step):
        piece = data[start : start + step]
        k = b.next(deadline)
        _view(b.area(b.rank, k), data.dtype, piece.size)[...] = piece
        yield start, piece, k


def _reduce_own_slice(ctx: OpContext, b: Board, k: int, piece: np.ndarray) -> list[tuple[int, int]]:
    """The first of two steps: reduce this rank's slice of every rank's piece ``k`` (the
    size of ``piece``) into its own area and raise REDUCED; returns every rank's slice."""
    m, dtype = piece.size, piece.dtype
    bounds = chunk_bounds(m, ctx.size)
    lo, hi = bounds[ctx.rank]
    mine = _view(b.area(ctx.rank, k), dtype, m)[lo:hi]
    for r in b.others:
        ctx.reduce(mine, _view(b.area(r, k), dtype, m)[lo:hi])
    b.raise_counter(b.REDUCED, k)
    return bounds


def allreduce(ctx: OpContext, data: np.ndarray, fallback: Callable[..., None]) -> None:
    """In-place all_reduce of ``data`` on the board."""
    b = board(ctx)
    if b is None:
        fallback(ctx, data)
        return
    size, deadline, dtype = ctx.size, ctx.deadline, data.dtype
    kind, steps = allreduce_piece(b, data, ctx.op, ctx.bfloat16)
    if steps:
        b.native_piece(kind, data, data, deadline, steps, op=ctx.op)
        ctx.finish_average(data)
        return
    for _, piece, k in _own_pieces(b, data, deadline):
        m = piece.size
        b.publish(k, data.nbytes)
        b.wait_published(k, data.nbytes, deadline)
        if piece.nbytes < ONE_STEP_BELOW_BYTES:
            piece[...] = _view(b.area(0, k), dtype, m)
            for r in range(1, size):
                ctx.reduce(piece, _view(b.area(r, k), dtype, m))
        else:
            bounds = _reduce_own_slice(ctx, b, k, piece)
            b.wait(b.REDUCED, k, deadline)
            for r, (lo, hi) in enumerate(bounds):
                piece[lo:hi] = _view(b.area(r, k), dtype, m)[lo:hi]
        b.raise_counter(b.DONE, k)
    ctx.finish_average(data)


def allreduce_mapped(
    ctx: OpContext,
    data: np.ndarray,
    fd: int,
    offset: int,
    fallback: Callable[[OpContext, np.ndarray], None],
    compression: tuple[bool, float] | None = None,
) -> None:
    """In-place all_reduce of ``data``, which lies at ``offset`` in the shared-memory file
    open as ``fd`` (-1: it does not), reading the peers' buffers where they lie: each rank
    maps every peer's file, reduces its slice of every buffer into its own, then copies the
    peers' reduced slices (no copy into the board: at n=2, 5 passes over half the buffer
    where the ring makes 9). Where some rank's buffer is not in such a file, or some rank
    cannot map one, every rank runs ``fallback`` instead (they agree on the board first).
    ``compression``: (bfloat16?, factor) to give all_reduce(compression=...)'s result, bit
    for bit (each buffer's slice rounded to 16 bits as it is read, summed in float32 in rank
    order, rounded once): nothing is gained on the wire here, where peers read the float32
    gradients where they lie, but the numbers are those of the compressed exchange."""
    b = board(ctx)
    if b is None:
        fallback(ctx, data)
        return
    deadline, rank = ctx.deadline, ctx.rank
    tag = b.mapped_size(data.nbytes)
    if compression is not None:
        tag = b.compressed_size(tag, compression[0])
    k = b.next(deadline)
    b.publish_mapping(k, fd, offset)
    b.publish(k, tag)
    b.wait_published(k, tag, deadline)
    theirs = b.map_published(k, data.nbytes)
    if not b.agree_mapped(k, theirs is not None, deadline) or theirs is None:
        b.raise_counter(b.DONE, k)  # (every rank agrees: nothing read, nothing written)
        fallback(ctx, data)
        return
    views = {r: t.view(data.dtype) for r, t in theirs.items()}
    bounds = chunk_bounds(data.size, ctx.size)
    lo, hi = bounds[rank]
    # Only this rank writes slice `rank`; the peers read theirs of ours meanwhile.
    if compression is None:
        for r in b.others:
            ctx.reduce(data[lo:hi], views[r][lo:hi])
        ctx.finish_average(data[lo:hi])
    else:
        views[rank] = data
        _sum_rounded(data, [views[r] for r in range(ctx.size)], lo, hi, *compression)
    k = b.next(deadline)  # READY of k: this rank's slice is reduced
    b.publish(k, tag)
    b.wait_published(k, tag, deadline)
    for r in b.others:
        a, z = bounds[r]
        data[a:z] = views[r][a:z]
    b.raise_counter(b.DONE, k)
    b.wait(b.DONE, k, deadline)  # nobody reads our buffer once the caller has it back


def _sum_rounded(
    out: np.ndarray, buffers: list[np.ndarray], lo: int, hi: int, bfloat16: bool, factor: float
) -> None:
    """``out[lo:hi]`` = the 16-bit rounding of the float32 sum, in list order, of every
    buffer's ``[lo:hi]`` times ``factor`` rounded to 16 bits (blocks that stay in cache)."""
    kernels = native.kernels
    block = 1 << 15
    half = np.empty(min(block, hi - lo), np.uint16)
    acc = np.empty(half.size, np.float32)
    for a in range(lo, hi, block):
        z = min(hi, a + block)
        h, s = half[: z - a], acc[: z - a]
        kernels.narrow(buffers[0][a:z], h, bfloat16, factor)
        kernels.widen(h, s, bfloat16)
        for buf in buffers[1:]:
            kernels.narrow(buf[a:z], h, bfloat16, factor)
            kernels.add_widened(s, h, bfloat16)
        kernels.narrow(s, h, bfloat16)
        kernels.widen(h, out[a:z], bfloat16)


def allreduce_compressed(
    ctx: OpContext,
    data: np.ndarray,
    bfloat16: bool,
    factor: float,
    fallback: Callable[[OpContext, np.ndarray], None],
) -> None:
    """In-place all_reduce of float32 ``data`` (times ``factor``) exchanged as 16-bit floats
    (see :mod:`ringcomm.algorithms.compressed`), the conversions fused into the board's
    copies: each rank rounds its piece into its area, sums its slice of every area in
    float32 and rounds it into its own area, and widens every slice into ``data``."""
    b = board(ctx)
    if b is None:
        fallback(ctx, data)
        return
    kernels, deadline, rank = native.kernels, ctx.deadline, ctx.rank
    half = np.dtype(np.uint16)
    tag = b.compressed_size(data.nbytes, bfloat16)
    step = max(1, b.area_bytes // half.itemsize)
    acc = np.empty(chunk_bounds(min(step, data.size), ctx.size)[0][1], np.float32)
    for start in range(0, max(1, data.size), step):
        piece = data[start : start + step]
        m = piece.size
        k = b.next(deadline)
        areas = [_view(b.area(r, k), half, m) for r in range(ctx.size)]
        kernels.narrow(piece, areas[rank], bfloat16, factor)
        b.publish(k, tag)
        b.wait_published(k, tag, deadline)
        bounds = chunk_bounds(m, ctx.size)
        lo, hi = bounds[rank]
        mine = acc[: hi - lo]
        kernels.widen(areas[0][lo:hi], mine, bfloat16)
        for r in range(1, ctx.size):  # in rank order, as every slice
            kernels.add_widened(mine, areas[r][lo:hi], bfloat16)
        kernels.narrow(mine, areas[rank][lo:hi], bfloat16)
        b.raise_counter(b.REDUCED, k)
        b.wait(b.REDUCED, k, deadline)
        for r, (lo, hi) in enumerate(bounds):
            kernels.widen(areas[r][lo:hi], piece[lo:hi], bfloat16)
        b.raise_counter(b.DONE, k)


def reduce(ctx: OpContext, data: np.ndarray, root: int, fallback: Callable[..., None]) -> None:
    """Reduce ``data`` into ``data`` on ``root`` on the board; other ranks' data stays."""
    b = board(ctx)
    if b is None:
        fallback(ctx, data, root)
        return
    rank, deadline, dtype = ctx.rank, ctx.deadline, data.dtype
    kind, steps = reduce_piece(b, data, root, ctx.op, ctx.bfloat16)
    if steps:
        b.native_piece(kind, data, data, deadline, steps, op=ctx.op, root=root)
        if rank == root:
            ctx.finish_average(data)
        return
    for _, piece, k in _own_pieces(b, data, deadline):
        m = piece.size
        if piece.nbytes < ONE_STEP_BELOW_BYTES:  # the root reduces everything
            if rank != root:
                b.publish(k, data.nbytes, done=True)  # it reads nothing of this piece
                continue
            b.publish(k, data.nbytes)
            b.wait_published(k, data.nbytes, deadline)
            for r in b.others:
                ctx.reduce(piece, _view(b.area(r, k), dtype, m))
        else:
            b.publish(k, data.nbytes)
            b.wait_published(k, data.nbytes, deadline)
            bounds = _reduce_own_slice(ctx, b, k, piece)
            if rank == root:
                b.wait(b.REDUCED, k, deadline)
                for r, (lo, hi) in enumerate(bounds):
                    piece[lo:hi] = _view(b.area(r, k), dtype, m)[lo:hi]
        b.raise_counter(b.DONE, k)
    if rank == root:
        ctx.finish_average(data)


def allgather(
    ctx: OpContext, out: np.ndarray, inp: np.ndarray, fallback: Callable[..., None]
) -> None:
    """Gather every rank's ``inp`` into ``out`` (rank order) on the board."""
    b = board(ctx)
    if b is None:
        fallback(ctx, out, inp)
        return
    rank, deadline, dtype = ctx.rank, ctx.deadline, inp.dtype
    c = inp.size
    kind, steps = allgather_piece(b, inp, ctx.bfloat16)
    if steps:
        b.native_piece(kind, inp, out, deadline, steps)
        return
    by_address = _gathers_by_address(b, inp)
    in_place = np.shares_memory(out, inp)
    if by_address:
        # One copy: every rank reads every peer's input where it lies, instead of the
        # owner copying it through its area (the copy a reader then pays for twice).
        k = b.next(deadline)
        b.publish_address(k, inp)
        b.publish(k, inp.nbytes)
        if not in_place:
            out[rank * c : (rank + 1) * c] = inp
        b.wait_published(k, inp.nbytes, deadline)
        for r in b.others:
            b.read_published(r, k, out[r * c : (r + 1) * c])
        b.raise_counter(b.DONE, k)
        b.wait(b.DONE, k, deadline)  # the input stays as it is until every peer read it
        return
    for start, piece, k in _own_pieces(b, inp, deadline):
        stop = start + piece.size
        b.publish(k, inp.nbytes)
        if not in_place:
            out[rank * c + start : rank * c + stop] = piece
        b.wait_published(k, inp.nbytes, deadline)
        for r in b.others:
            out[r * c + start : r * c + stop] = _view(b.area(r, k), dtype, piece.size)
        b.raise_counter(b.DONE, k)


def _chunk_board(ctx: OpContext, inp: np.ndarray) -> Board | None:
    """The board for a reduce_scatter or all_to_all of ``inp``; None where the
    point-to-point algorithm runs instead (no board, or an area too small for an element
    of every chunk)."""
    b = board(ctx)
    return None if b is None or b.area_bytes < ctx.size * inp.itemsize else b


def _chunks_published(
    b: Board, inp: np.ndarray, deadline: float
) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """The Python steps of reduce_scatter and all_to_all: elements ``start:stop`` of every
    one of ``inp``'s ``size`` chunks at a time (as many as fit an area), copied into this
    rank's area and published; yields ``start, stop`` and every rank's area as ``size`` rows
    of them once every peer published, and raises DONE when the caller is through."""
    size = b.size
    chunks = inp.reshape(size, inp.size // size)
    c = chunks.shape[1]
    step = max(1, b.area_bytes // (size * inp.itemsize))
    for start in range(0, max(1, c), step):
        stop = min(c, start + step)
        m = stop - start
        k = b.next(deadline)
        areas = [_view(b.area(r, k), inp.dtype, size * m).reshape(size, m) for r in range(size)]
        areas[b.rank][...] = chunks[:, start:stop]
        b.publish_address(k, None)  # (a native reader looks there first)
        b.publish(k, inp.nbytes)
        b.wait_published(k, inp.nbytes, deadline)
        yield start, stop, areas
        b.raise_counter(b.DONE, k)


def reduce_scatter(
    ctx: OpContext, out: np.ndarray, inp: np.ndarray, fallback: Callable[..., None]
) -> None:
    """Reduce ``inp`` across ranks; this rank's ``out`` gets chunk ``rank``, on the board."""
    b = _chunk_board(ctx, inp)
    if b is None:
        fallback(ctx, out, inp)
        return
    rank, deadline = ctx.rank, ctx.deadline
    kind, steps = reduce_scatter_piece(b, out, inp, ctx.op, ctx.bfloat16)
    if steps:
        b.native_piece(kind, inp, out, deadline, steps, op=ctx.op)
        ctx.finish_average(out)
        return
    for start, stop, areas in _chunks_published(b, inp, deadline):
        piece = out[start:stop]
        piece[...] = areas[rank][rank]
        for r in b.others:
            ctx.reduce(piece, areas[r][rank])
    ctx.finish_average(out)


def all_to_all(
    ctx: OpContext, out: np.ndarray, inp: np.ndarray, fallback: Callable[..., None]
) -> None:
    """Chunk r of this rank's ``inp`` to rank r, chunk r of ``out`` from rank r, on the
    board (``out`` and ``inp`` apart)."""
    b = _chunk_board(ctx, inp)
    if b is None:
        fallback(ctx, out, inp)
        return
    rank, deadline = ctx.rank, ctx.deadline
    kind, steps = alltoall_piece(b, inp)
    if steps:
        b.native_piece(kind, inp, out, deadline, steps)
        return
    outs = out.reshape(ctx.size, -1)
    outs[rank] = inp.reshape(ctx.size, -1)[rank]
    for start, stop, areas in _chunks_published(b, inp, deadline):
        for r in b.others:
            outs[r, start:stop] = areas[r][rank]


def broadcast(ctx: OpContext, data: np.ndarray, root: int, fallback: Callable[..., None]) -> None:
    """Copy ``data`` from ``root`` to every rank on the board. From the board's
    :attr:`~Board.read_in_place_bytes` up, where every rank may read the root's memory, the
    others read it straight from the root's buffer (one copy, and the root writes no line a
    reader holds: the copy through an area, written by one core and read by another, was 10x
    slower when the two share no cache; where they share one, data that fits an area goes
    through it)."""
    b = board(ctx)
    if b is None:
        fallback(ctx, data, root)
        return
    rank, deadline, dtype = ctx.rank, ctx.deadline, data.dtype
    kind, steps = broadcast_piece(b, data, root, ctx.bfloat16)
    if steps:
        b.native_piece(kind, data, data, deadline, steps, root=root)
        return
    by_address = _gathers_by_address(b, data)
    if rank == root:
        if by_address:  # (decided as the native path decides: every rank may read)
            k = b.next(deadline)
            b.publish_address(k, data)
            b.publish(k, data.nbytes, done=True)
            b.wait(b.DONE, k, deadline)  # the buffer stays as it is until everyone read it
            return
        for start, _, k in _own_pieces(b, data, deadline):
            if not start:
                b.publish_address(k, None)  # (the readers look on the first piece)
            b.publish(k, data.nbytes, done=True)  # the root reads nothing
        return
    k = b.next(deadline)
    b.wait_published(k, data.nbytes, deadline, [root])
    if b.read_published(root, k, data):
        b.raise_counter(b.DONE, k)
        return
    step = max(1, b.area_bytes // data.itemsize)
    for start in range(0, max(1, data.size), step):
        piece = data[start : start + step]
        if start:
            k = b.next(deadline)
            b.wait_published(k, data.nbytes, deadline, [root])
        piece[...] = _view(b.area(root, k), dtype, piece.size)
        b.raise_counter(b.DONE, k)


def barrier(ctx: OpContext, fallback: Callable[[OpContext], None]) -> None:
    """Return once every rank has arrived, on the board."""
    b = board(ctx)
    if b is None:
        fallback(ctx)
        return
    if b.table is not None:
        kind, steps = BARRIER_PIECE  # (nothing to copy)
        b.native_piece(kind, NOTHING, NOTHING, ctx.deadline, steps)
        return
    k = b.next(ctx.deadline)
    b.publish(k, 0)
    b.wait_published(k, 0, ctx.deadline)
    b.raise_counter(b.DONE, k)  # (only now: the peers' counters were read)
