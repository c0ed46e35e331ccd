"""A small collective on the shared-memory board in one native call per rank.

The board (``ringcomm.transport.shm.board``) runs a collective in one or two
synchronisation steps whatever the number of ranks, but in Python each step still costs
several interpreter round trips: number the piece, copy it into the area, fence the
counter, look whether a peer sleeps, wait with a closure per poll, one numba dispatch per
reduction, fence again. For a 4 KiB all_reduce that was 8-9 us on top of the call itself,
where MPI's whole collective takes 4-9 us. Here the steps are native code:

- publish: once every peer finished reading this rank's area of two pieces back, copy the
  data into the area, write the piece's size and raise READY (sequentially consistent: the
  sleep/wake handshake needs it);
- finish: once every rank it reads from raised READY, check their sizes, reduce or copy
  what this rank needs straight out of their areas (every reduction in rank order, so every
  rank gets the same bits), and raise DONE.

:func:`piece` takes both steps in one call where it can. It spins for a bounded number of
polls only. Waiting longer, sleeping on the futex, noticing a dead peer, timeouts and every
error message stay in Python: a call that could not finish returns a status saying so, the
caller waits there and calls again. A call also says when a peer sleeps, for the caller to
wake it.

By address: a rank may publish where its data lies instead of a copy (BY_ADDRESS); the
others then read it there with ``process_vm_readv``, called through its address in the
table, and the publisher waits until every reader raised DONE before its buffer may change
(AWAIT_DONE). broadcast and all_gather read the owner's data, reduce_scatter its chunk of
every peer's input block by block through a scratch, all_to_all its chunk of every peer's
input straight into its output, and ALL_REDUCE_SLICES reduces this rank's slice of every
buffer in place (FINISH, raising REDUCED), then reads the others' reduced slices (GATHER).
ALL_REDUCE_SLICES also runs through the areas (COPY): each rank then copies its reduced
slice into its own area, and the others copy it from there.

The board's layout lives with the board: it hands over a ``table`` of uint64 words, the
header below, then per rank the addresses of its counters, its two areas, (peers only) the
sleeping flag of its transport segment and its process id.
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .cache import cached
from .kernels import _apply_arithmetic
from .ops import AVG, MAX, MIN, PROD, SUM
from .shm import _load_acquire, _store_release, _store_seq_cst

AVAILABLE = not numba.config.DISABLE_JIT  # else the board runs its Python steps
# The dtypes and reductions done here; others (16-bit floats, bool, bitwise ops) take the
# board's Python steps.
DTYPES = frozenset(
    np.dtype(d) for d in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                          "uint64", "float32", "float64")
)  # fmt: skip
OPS = frozenset((SUM, PROD, MIN, MAX, AVG))

# What finish does with what the ranks published.
# ALL_REDUCE_SLICES: each rank reduces its slice of every rank's data into its own (FINISH,
# then REDUCED), then reads every other rank's reduced slice (GATHER): where they lie (by
# address), or out of the areas (each rank copies its reduced slice back into its own).
ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER, BROADCAST, REDUCE, BARRIER = range(6)
ALL_REDUCE_SLICES = 6
# BROADCAST_SPLIT: a broadcast by address whose copy into each reader is split between the
# two (a core each): every reader publishes where its buffer lies and reads the root's data
# but the last ``size``-th (FINISH, raising DONE); the root writes that last part into every
# reader's buffer (FINISH, then REDUCED); a reader is through once the root raised REDUCED
# (GATHER). Each rank copies (n-1)/n of the data, where a reader alone copied all of it.
BROADCAST_SPLIT = 7
# ALL_TO_ALL: every rank publishes its input (a copy of every chunk but its own, or where it
# lies); each reads chunk ``rank`` of every peer's into that peer's slot of its output.
ALL_TO_ALL = 8

# The table's header words, then per rank FIELDS words from FIRST. H_ADDRESS: the counter
# word (and the next, by parity) where a rank says where its data lies (0: in its area);
# H_READV, H_WRITEV: the addresses of libc's process_vm_readv and process_vm_writev (0: none).
# H_SCRATCH (H_SCRATCH_BYTES long): where a reduction reads peers' data into by address.
H_SIZE, H_RANK, H_READY, H_SIZE_WORD, H_DONE, H_COUNTER_WORDS, H_ADDRESS, H_READV = range(8)
# H_REDUCED: the counter word of the first of two steps.
H_SCRATCH, H_SCRATCH_BYTES, H_REDUCED = 8, 9, 10
# A wait that its spins did not end yields the core (libc's sched_yield at H_YIELD) between
# polls for up to H_YIELD_NS nanoseconds (libc's clock_gettime at H_CLOCK) before it
# returns; 0 in any of them: it returns at once.
H_YIELD, H_CLOCK, H_YIELD_NS = 11, 12, 13
H_WRITEV = 14
# H_STREAM_BYTES: an all_gather with this much data on the host (every rank's output, and
# input where apart) writes its output with streaming stores (0: never; _copy_streaming).
H_STREAM_BYTES = 15
# H_SLOT_BYTES: a piece no larger than this lies in slot ``(k >> 1) % AREA_SLOTS`` of its
# area, this many bytes apart (0: at the area's start), so that a rank rewrites the lines
# of a small piece only AREA_SLOTS pieces of that parity later, not while its readers still
# hold them. 2026-12-08, the Intel Xeon, n=2 (bench/native_loop.py, native us a piece,
# slots / the area's start): broadcast through the areas 64 KiB 3.9 / 9.0-9.4, the one-step
# all_reduce 16 KiB 3.0 / 4.1-4.3; 4 KiB and 256 KiB alike. A standalone writer and reader
# moved 64 KiB in 3.6 us through four slots or more, 9.6-12 through two.
H_SLOT_BYTES = 16
AREA_SLOTS = 4
FIRST = 17
F_COUNTERS, F_AREA0, F_AREA1, F_SLEEPING, F_PID = range(5)
FIELDS = 5

# The steps of piece() to take (bits). BY_ADDRESS: publish where ``src`` lies instead of a
# copy; AWAIT_DONE: then wait until every peer raised DONE (it read what this rank
# published by address, which must not change before).
PUBLISH, COPY, DONE_TOO, FINISH, BY_ADDRESS, AWAIT_DONE, GATHER = 1, 2, 4, 8, 16, 32, 64
WHOLE_PIECE = PUBLISH | COPY | FINISH  # the usual call: publish a copy, read the others
# Not piece()'s but its caller's (piece() ignores it): the operation goes through the areas
# piece after piece of the board's piece size (Board.native_piece cuts it).
IN_PIECES = 128
# What piece() says (bits; WAKE: some peer sleeps on its futex, wake it; UNREAD: reading a
# peer's memory failed, nothing raised: the caller reads it again, to raise the error).
PUBLISHED, FINISHED, BLOCKED, NOT_READY, MISMATCH, UNREAD = 1, 2, 4, 8, 16, 32
AWAITED, NOT_DONE = 64, 128
WAKE = 256
GATHERED, NOT_REDUCED = 512, 1024

# The CPU's spin-wait hint as an LLVM intrinsic (numba's LLVM takes no inline assembly).
_PAUSE = platform.machine().lower() in ("x86_64", "amd64")


@intrinsic
def _voidptr(typingctx, address):  # type: ignore[no-untyped-def]
    """The address (a uint64) as a pointer, for numba.carray."""
    sig = types.voidptr(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return sig, codegen


@intrinsic
def _pause(typingctx):  # type: ignore[no-untyped-def]
    """x86's spin-wait hint (elsewhere nothing): a sibling hyperthread gets the core."""
    sig = types.void()

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        if _PAUSE:
            fnty = ir.FunctionType(ir.VoidType(), [])
            builder.call(
                cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause"), []
            )
        return context.get_dummy_value()

    return sig, codegen


# Inlining: numba's inline="always" copies the callee's IR into every call site, which
# dominated the compile: 27 s per dtype for piece (4.9 min for warm_cache's ten) when
# every helper was inlined. Small helpers on the per-call path stay inlined (called
# through numba, they cost the 4 KiB call 4-6%: numba does not inline across its own
# functions); the big ones whose own work (a system call, a loop over blocks) dwarfs a
# call do not: 12 s per dtype, the native call's cost alike (bench/piece_cost.py).
@njit(inline="always")
def _word(table, i):  # type: ignore[no-untyped-def]
    """Header word ``i`` as a signed integer (numba mixes uint64 and int64 into floats)."""
    return np.int64(table[i])


@njit(inline="always")
def _counters(table, r):  # type: ignore[no-untyped-def]
    address = table[FIRST + FIELDS * r + F_COUNTERS]
    return carray(_voidptr(address), _word(table, H_COUNTER_WORDS), np.uint64)


@njit(inline="always")
def _area(table, r, k, like, count):  # type: ignore[no-untyped-def]
    """Rank ``r``'s area of piece ``k`` as ``count`` elements of ``like``'s dtype, from the
    slot where a piece of that size lies (see H_SLOT_BYTES)."""
    base = table[FIRST + FIELDS * r + F_AREA0 + (k & 1)]
    slot = _word(table, H_SLOT_BYTES)
    if slot > 0 and count * like.itemsize <= slot:
        base += np.uint64(((k >> 1) % AREA_SLOTS) * slot)
    return carray(_voidptr(base), count, like.dtype)


@njit(inline="always")
def _sleeping(table):  # type: ignore[no-untyped-def]
    """WAKE if some peer sleeps on its futex (read after a sequentially consistent store)."""
    for r in range(_word(table, H_SIZE)):
        address = table[FIRST + FIELDS * r + F_SLEEPING]
        if address and _load_acquire(carray(_voidptr(address), 1, np.uint64), 0):
            return WAKE
    return 0


@intrinsic
def _sched_yield(typingctx, function):  # type: ignore[no-untyped-def]
    """sched_yield() through the function's address (from the table)."""
    sig = types.void(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        fnty = ir.FunctionType(ir.IntType(32), [])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _monotonic_ns(typingctx, function):  # type: ignore[no-untyped-def]
    """clock_gettime(CLOCK_MONOTONIC) in nanoseconds, through the function's address."""
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i32, i64 = ir.IntType(32), ir.IntType(64)
        timespec = cgutils.alloca_once(builder, ir.ArrayType(i64, 2))  # (seconds, nanoseconds)
        at = builder.bitcast(timespec, i64.as_pointer())
        fnty = ir.FunctionType(i32, [i32, i64.as_pointer()])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [ir.Constant(i32, 1), at])
        seconds = builder.load(at)
        nanoseconds = builder.load(builder.gep(at, [ir.Constant(i64, 1)]))
        return builder.add(builder.mul(seconds, ir.Constant(i64, 1_000_000_000)), nanoseconds)

    return sig, codegen


@njit(inline="always")
def _reached(table, word, k, only, spins):  # type: ignore[no-untyped-def]
    """Whether counter ``word`` of every peer (or of rank ``only``, if >= 0) reached ``k``
    within ``spins`` polls each, then polls that yield the core for up to H_YIELD_NS."""
    size, rank = _word(table, H_SIZE), _word(table, H_RANK)
    yield_until = np.int64(0)
    for r in range(size):
        if r == rank or (only >= 0 and r != only):
            continue
        counters = _counters(table, r)
        polls = 0
        while np.int64(_load_acquire(counters, word)) < k:
            if polls < spins:
                polls += 1
                _pause()
                continue
            yield_ns = _word(table, H_YIELD_NS)
            if yield_ns <= 0 or not table[H_YIELD] or not table[H_CLOCK]:
                return False
            now = _monotonic_ns(table[H_CLOCK])
            if yield_until == 0:
                yield_until = now + yield_ns
            elif now >= yield_until:
                return False
            _sched_yield(table[H_YIELD])
    return True


def _emit_copy(context, builder, signature, args, nontemporal):  # type: ignore[no-untyped-def]
    """Code for ``dst[:src.size] = src``: up to ``dst``'s next 64-byte line and the last
    bytes by memcpy, the lines between as 64-byte loads and stores (non-temporal ones, then
    a full fence, where ``nontemporal``). Not memcpy for the lines: from 2 KiB glibc copies
    with ``rep movsb``, which on this machine's AMD EPYC (Zen 3) runs 12-15x slower where
    ``dst`` lies a few bytes past a multiple of 4 KiB from ``src``, as where a malloc'ed
    array (16 bytes into its page) takes data out of a page-aligned area: 64 KiB 23
    against 1.7 us, 256 KiB 92 against 7.5. This loop takes 1.7 and 7.3 us either way."""
    dst_ty, src_ty = signature.args
    d = context.make_array(dst_ty)(context, builder, args[0])
    s = context.make_array(src_ty)(context, builder, args[1])
    i64, i8p = ir.IntType(64), ir.IntType(8).as_pointer()
    itemsize = context.get_abi_sizeof(context.get_data_type(src_ty.dtype))
    nbytes = builder.mul(builder.extract_value(s.shape, 0), ir.Constant(i64, itemsize))
    to, at = builder.ptrtoint(d.data, i64), builder.ptrtoint(s.data, i64)
    line = ir.Constant(i64, 63)
    head = builder.and_(builder.sub(ir.Constant(i64, 0), to), line)  # to the next line
    head = builder.select(builder.icmp_unsigned("<", nbytes, head), nbytes, head)
    cgutils.raw_memcpy(builder, d.data, s.data, head, 1)
    to, at = builder.add(to, head), builder.add(at, head)
    rest = builder.sub(nbytes, head)
    lines = builder.lshr(rest, ir.Constant(i64, 6))
    vector = ir.VectorType(i64, 8)
    marked = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
    with cgutils.for_range(builder, lines) as loop:
        offset = builder.shl(loop.index, ir.Constant(i64, 6))
        source = builder.inttoptr(builder.add(at, offset), vector.as_pointer())
        target = builder.inttoptr(builder.add(to, offset), vector.as_pointer())
        store = builder.store(builder.load(source, align=1), target, align=64)
        if nontemporal:
            store.set_metadata("nontemporal", marked)
    body = builder.shl(lines, ir.Constant(i64, 6))
    tail_to = builder.inttoptr(builder.add(to, body), i8p)
    tail_at = builder.inttoptr(builder.add(at, body), i8p)
    cgutils.raw_memcpy(builder, tail_to, tail_at, builder.sub(rest, body), 1)
    if nontemporal:
        builder.fence("seq_cst")
    return context.get_dummy_value()


@intrinsic
def _copy(typingctx, dst, src):  # type: ignore[no-untyped-def]
    """``dst[:src.size] = src`` (contiguous, one dtype; see :func:`_emit_copy`): numba's
    slice assignment is 3-5x slower."""
    sig = types.void(dst, src)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return _emit_copy(context, builder, signature, args, False)

    return sig, codegen


@intrinsic
def _copy_streaming(typingctx, dst, src):  # type: ignore[no-untyped-def]
    """``dst[:src.size] = src`` with non-temporal stores from ``dst``'s first 64-byte line
    on, then a full fence (the stores are weakly ordered; the counter raised after them must
    not overtake them). A plain store first reads the line it writes (a third of the memory
    traffic of a copy whose output is not in cache) and pushes other data out of the
    caches; this one does neither: a copy of 16 MiB out of cache 1.35-1.4x faster here."""
    sig = types.void(dst, src)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return _emit_copy(context, builder, signature, args, True)

    return sig, codegen


@intrinsic
def _process_vm_call(typingctx, function, pid, local, remote):  # type: ignore[no-untyped-def]
    """process_vm_readv or process_vm_writev(pid, local, 1, remote, 1, 0) (one signature)
    through the function's address (from the table: a ctypes function in the code would
    keep numba from caching it)."""
    sig = types.int64(types.uint64, types.int64, types.uint64, types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i64, ptr = ir.IntType(64), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(i64, [ir.IntType(32), ptr, i64, ptr, i64, i64])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        one, zero = ir.Constant(i64, 1), ir.Constant(i64, 0)
        pid = builder.trunc(args[1], ir.IntType(32))
        local, remote = builder.inttoptr(args[2], ptr), builder.inttoptr(args[3], ptr)
        return builder.call(fn, [pid, local, one, remote, one, zero])

    return sig, codegen


@njit
def _remote_copy(table, function_word, r, address, local):  # type: ignore[no-untyped-def]
    """Copy ``local.nbytes`` between ``local`` and ``address`` in rank ``r``'s process, the
    way the function at header word ``function_word`` goes (H_READV: into ``local``;
    H_WRITEV: out of it); False if the system call failed (the caller says why)."""
    function = table[function_word]
    if not function:
        return False
    pid = _word(table, FIRST + FIELDS * r + F_PID)
    iov = np.empty(4, np.uint64)  # local (base, length), then remote
    total, done = np.uint64(local.nbytes), np.uint64(0)
    base = np.uint64(local.ctypes.data)
    while done < total:
        iov[0], iov[1] = base + done, total - done
        iov[2], iov[3] = address + done, total - done
        at = np.uint64(iov.ctypes.data)
        got = _process_vm_call(function, pid, at, at + np.uint64(16))
        if got <= 0:
            return False
        done += np.uint64(got)
    return True


@njit
def _read_remote(table, r, address, dst):  # type: ignore[no-untyped-def]
    """Read ``dst.nbytes`` at ``address`` in rank ``r``'s process into ``dst``; False if
    the system call failed (the caller says why)."""
    return _remote_copy(table, H_READV, r, address, dst)


@njit
def _read_streaming(table, r, address, dst):  # type: ignore[no-untyped-def]
    """As :func:`_read_remote`, block by block through the scratch (where the read's own
    stores stay in cache), each block then streamed into ``dst``."""
    scratch = carray(_voidptr(table[H_SCRATCH]), _word(table, H_SCRATCH_BYTES), np.uint8)
    flat = dst.view(np.uint8)
    for lo in range(0, flat.size, scratch.size):
        hi = min(flat.size, lo + scratch.size)
        block = scratch[: hi - lo]
        if not _read_remote(table, r, address + np.uint64(lo), block):
            return False
        _copy_streaming(flat[lo:hi], block)
    return True


@njit(inline="always")
def _read(table, r, k, dst, like, streaming=False):  # type: ignore[no-untyped-def]
    """Read rank ``r``'s data of piece ``k`` into ``dst``: where it lies if ``r`` published
    its address (with streaming stores if ``streaming``), else out of its area. False if a
    read by address failed."""
    address = _counters(table, r)[_word(table, H_ADDRESS) + (k & 1)]
    if address and streaming:
        return _read_streaming(table, r, address, dst)
    if address:
        return _read_remote(table, r, address, dst)
    _copy(dst, _area(table, r, k, like, dst.size))
    return True


@njit
def _reduce_own_chunk(table, src, dst, start, k, op):  # type: ignore[no-untyped-def]
    """Reduce this rank's chunk (``dst.size`` elements from ``start``) of every rank's
    input into ``dst``, in rank order, block by block through the scratch: each peer's out
    of its area, or read where it lies if it published its address. In place (``dst`` is
    that chunk of ``src``), each block of its own chunk is set aside before ``dst`` is
    written (not on rank 1 where the order does not change the bits: see ``swap``).
    False if a read by address failed."""
    size, rank = _word(table, H_SIZE), _word(table, H_RANK)
    c, itemsize = dst.size, dst.itemsize
    block = max(1, _word(table, H_SCRATCH_BYTES) // (2 * itemsize))
    scratch = carray(_voidptr(table[H_SCRATCH]), 2 * block, dst.dtype)
    peer, own_copy = scratch[:block], scratch[block:]
    mine = src[start : start + c]
    in_place = mine.ctypes.data == dst.ctypes.data
    address_word = _word(table, H_ADDRESS) + (k & 1)
    # Rank 1 in place keeps its own block where it is and reduces rank 0's into it, where
    # rank 0's comes out of its area: p1 + p0 and p1 * p0 are p0 + p1 and p0 * p1, bit for
    # bit (not so MIN and MAX, at -0.0 against 0.0), and two copies of the block are saved.
    swap = (
        in_place
        and rank == 1
        and (op == SUM or op == PROD or op == AVG)  # noqa: SIM109 (numba: plain comparisons)
        and not _counters(table, 0)[address_word]
    )
    for lo in range(0, c, block):
        hi = min(c, lo + block)
        out = dst[lo:hi]
        own = mine[lo:hi]
        if in_place and rank > 0 and not swap:
            own = own_copy[: hi - lo]
            _copy(own, mine[lo:hi])
        for r in range(size):
            if r == rank:
                if swap:  # (already in ``out``, rank 0's reduced into it)
                    continue
                part = own
            else:
                address = _counters(table, r)[address_word]
                if address:
                    part = out if r == 0 else peer[: hi - lo]
                    at = address + np.uint64((start + lo) * itemsize)
                    if not _read_remote(table, r, at, part):
                        return False
                else:
                    part = _area(table, r, k, src, src.size)[start + lo : start + hi]
            if r == 0 and not swap:
                if part.ctypes.data != out.ctypes.data:
                    _copy(out, part)
            else:
                _apply_arithmetic(out, part, op)
    return True


@njit(inline="always")
def _slice(m, size, r):  # type: ignore[no-untyped-def]
    """Where rank ``r``'s slice of ``m`` elements starts and stops (the first ``m % size``
    ranks take one more)."""
    base, extra = m // size, m % size
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


@njit
def _gather_slices(table, data, k, spins):  # type: ignore[no-untyped-def]
    """The second step of ALL_REDUCE_SLICES: once every peer raised REDUCED, read each
    one's reduced slice where it lies into ``data``, then raise DONE."""
    size, rank = _word(table, H_SIZE), _word(table, H_RANK)
    if not _reached(table, _word(table, H_REDUCED), k, -1, spins):
        return NOT_REDUCED
    address_word = _word(table, H_ADDRESS) + (k & 1)
    for r in range(size):
        if r == rank:
            continue
        start, stop = _slice(data.size, size, r)
        address = _counters(table, r)[address_word]
        at = address + np.uint64(start * data.itemsize)
        if not address:  # through the areas: its reduced slice is in its area
            _copy(data[start:stop], _area(table, r, k, data, data.size)[start:stop])
        elif not _read_remote(table, r, at, data[start:stop]):
            return UNREAD
    _store_seq_cst(_counters(table, rank), _word(table, H_DONE), k)
    return GATHERED | _sleeping(table)


@njit(inline="always")
def _split_head(count, size):  # type: ignore[no-untyped-def]
    """BROADCAST_SPLIT: how many elements a reader reads; the root writes the rest."""
    return count - count // size


@njit
def _write_shares(table, src, head, k):  # type: ignore[no-untyped-def]
    """BROADCAST_SPLIT's root: write ``src[head:]`` where every reader's buffer of piece
    ``k`` lies, from the next rank on (readers that arrive together are not all written
    last). False if a write failed."""
    size, rank = _word(table, H_SIZE), _word(table, H_RANK)
    share = src[head:]
    if share.size == 0:
        return True
    offset = np.uint64(head * src.itemsize)
    address_word = _word(table, H_ADDRESS) + (k & 1)
    for i in range(1, size):
        r = (rank + i) % size
        address = _counters(table, r)[address_word]
        if not address or not _remote_copy(table, H_WRITEV, r, address + offset, share):
            return False
    return True


@njit(inline="always")
def _stride(size, src, dst):  # type: ignore[no-untyped-def]
    """How many elements of all_gather output ``dst`` lie between the starts of two ranks'
    parts, where ``src`` and ``dst`` start at the same element of a part: ``src.size`` for
    a whole operation, the input's whole count for a piece of it (see _piece_of)."""
    return (dst.size - src.size) // (size - 1)


@njit(inline="always")
def _publish(table, src, kind, k, size_word, steps, spins):  # type: ignore[no-untyped-def]
    rank = _word(table, H_RANK)
    if k > 2 and not _reached(table, _word(table, H_DONE), k - 2, -1, spins):
        return BLOCKED
    own = _counters(table, rank)
    if steps & BY_ADDRESS:
        own[_word(table, H_ADDRESS) + (k & 1)] = np.uint64(src.ctypes.data)
    else:
        own[_word(table, H_ADDRESS) + (k & 1)] = 0
        # No peer reads this rank's own slice or chunk (a reduced slice goes there later).
        skips_own = (kind == ALL_REDUCE_SLICES) | (kind == REDUCE_SCATTER) | (kind == ALL_TO_ALL)
        if steps & COPY and skips_own:
            area = _area(table, rank, k, src, src.size)
            size = _word(table, H_SIZE)
            if kind == ALL_REDUCE_SLICES:
                start, stop = _slice(src.size, size, rank)
            else:
                start = rank * (src.size // size)
                stop = start + src.size // size
            _copy(area[:start], src[:start])
            _copy(area[stop:], src[stop:])
        elif steps & COPY:
            _copy(_area(table, rank, k, src, src.size), src)
    own[_word(table, H_SIZE_WORD) + (k & 1)] = size_word
    if steps & DONE_TOO:
        _store_release(own, _word(table, H_DONE), k)
    _store_seq_cst(own, _word(table, H_READY), k)
    return PUBLISHED | _sleeping(table)


@njit(inline="always")
def _finish(table, src, dst, kind, k, size_word, op, root, spins):  # type: ignore[no-untyped-def]
    size, rank = _word(table, H_SIZE), _word(table, H_RANK)
    only = root if kind == BROADCAST or (kind == BROADCAST_SPLIT and rank != root) else -1
    if not _reached(table, _word(table, H_READY), k, only, spins):
        return NOT_READY
    word = _word(table, H_SIZE_WORD) + (k & 1)
    for r in range(size):
        theirs = np.int64(_counters(table, r)[word])
        if r != rank and (only < 0 or r == only) and theirs != size_word:
            return MISMATCH
    if kind == ALL_REDUCE or kind == REDUCE:  # noqa: SIM109 (numba: plain comparisons)
        # In place, rank 0's data is in ``dst`` already, and rank 1 reduces rank 0's into
        # its own where the order does not change the bits (as _reduce_own_chunk).
        in_place = src.ctypes.data == dst.ctypes.data
        first = 1
        if in_place and rank == 1 and (op == SUM or op == PROD or op == AVG):  # noqa: SIM109
            _apply_arithmetic(dst, _area(table, 0, k, dst, dst.size), op)
            first = 2
        elif not in_place or rank != 0:
            _copy(dst, _area(table, 0, k, dst, dst.size))
        for r in range(first, size):
            _apply_arithmetic(dst, _area(table, r, k, dst, dst.size), op)
    elif kind == REDUCE_SCATTER and not _reduce_own_chunk(table, src, dst, rank * dst.size, k, op):
        return UNREAD
    elif kind == ALL_REDUCE_SLICES:
        start, stop = _slice(src.size, size, rank)
        if not _reduce_own_chunk(table, src, dst[start:stop], start, k, op):
            return UNREAD
        own = _counters(table, rank)
        if not own[_word(table, H_ADDRESS) + (k & 1)]:  # published in its area: so is this
            _copy(_area(table, rank, k, dst, dst.size)[start:stop], dst[start:stop])
        _store_seq_cst(own, _word(table, H_REDUCED), k)
        return FINISHED | _sleeping(table)
    elif kind == ALL_GATHER:
        c, stride = src.size, _stride(size, src, dst)
        mine = dst[rank * stride : rank * stride + c]
        in_place = mine.ctypes.data == src.ctypes.data  # (its part is there already)
        # Where the host's data of this all_gather (every rank's output, and its input if
        # apart) overflows the cache, the output goes around it: a plain store would read
        # each line first and push out the inputs still to be read.
        host_bytes = size * (dst.nbytes + (0 if in_place else src.nbytes))
        streaming = 0 < _word(table, H_STREAM_BYTES) <= host_bytes
        if streaming and not in_place:
            _copy_streaming(mine, src)
        elif not in_place:
            _copy(mine, src)
        # Each rank starts with the next rank's input, so ranks that read at the same time
        # read different peers' pages, instead of all reading rank 0's first (n=4: 1.10x
        # at 16 MiB, 1.16x at 4 MiB).
        for i in range(1, size):
            r = (rank + i) % size
            if not _read(table, r, k, dst[r * stride : r * stride + c], src, streaming):
                return UNREAD
    elif kind == BROADCAST and not _read(table, root, k, dst, dst):
        return UNREAD
    elif kind == ALL_TO_ALL:
        c = dst.size // size
        _copy(dst[rank * c : (rank + 1) * c], src[rank * c : (rank + 1) * c])
        offset = np.uint64(rank * c * dst.itemsize)
        address_word = _word(table, H_ADDRESS) + (k & 1)
        for i in range(1, size):  # (from the next rank on, as all_gather)
            r = (rank + i) % size
            out = dst[r * c : (r + 1) * c]
            address = _counters(table, r)[address_word]
            if not address:
                _copy(out, _area(table, r, k, src, src.size)[rank * c : (rank + 1) * c])
            elif not _read_remote(table, r, address + offset, out):
                return UNREAD
    elif kind == BROADCAST_SPLIT:
        head = _split_head(dst.size, size)
        if rank == root:
            if not _write_shares(table, src, head, k):
                return UNREAD
            _store_seq_cst(_counters(table, rank), _word(table, H_REDUCED), k)
            return FINISHED | _sleeping(table)
        if not _read(table, root, k, dst[:head], dst):
            return UNREAD
    own = _counters(table, rank)
    _store_seq_cst(own, _word(table, H_DONE), k)
    return FINISHED | _sleeping(table)


@cached(nogil=True)
def piece(table, src, dst, kind, k, size_word, op, root, steps, spins):  # type: ignore[no-untyped-def]
    """The ``steps`` (PUBLISH, COPY, DONE_TOO, FINISH, BY_ADDRESS, GATHER, AWAIT_DONE) of
    piece ``k`` of an operation of ``size_word`` bytes, as far as they go within ``spins``
    polls per wait.

    PUBLISH: once no peer still reads piece ``k - 2`` (else BLOCKED), say where ``src`` lies
    if BY_ADDRESS, else copy it into this rank's area if COPY; write the size, raise READY
    (and DONE if DONE_TOO: this rank reads nothing): PUBLISHED. It returns there if a peer
    sleeps (WAKE: the caller wakes it before anyone waits for it). FINISH: once every rank
    it reads from (a broadcast's reader: ``root``) raised READY (else NOT_READY) with this
    size (else MISMATCH, nothing read), read the piece as ``kind`` says into ``dst``
    (reductions with ``op``, in rank order; all_gather, reduce_scatter, all_to_all and
    broadcast read a peer by address where it published one, else out of its area; UNREAD
    if such a read, or BROADCAST_SPLIT's root's write, failed) and raise DONE
    (ALL_REDUCE_SLICES: its slice only, then REDUCED; BROADCAST_SPLIT's root: REDUCED, once
    it wrote every reader's share): FINISHED. GATHER (ALL_REDUCE_SLICES): once every peer
    raised REDUCED (else NOT_REDUCED), read their reduced slices and raise DONE: GATHERED;
    (BROADCAST_SPLIT's reader) once the root raised REDUCED: GATHERED. AWAIT_DONE: then
    wait until every peer raised DONE: AWAITED (else NOT_DONE)."""
    status = 0
    if steps & PUBLISH:
        status = _publish(table, src, kind, k, size_word, steps, spins)
        if status != PUBLISHED or not steps & (FINISH | AWAIT_DONE):
            return status
    if steps & FINISH:
        status |= _finish(table, src, dst, kind, k, size_word, op, root, spins)
        if status & (WAKE | NOT_READY | MISMATCH | UNREAD) or not steps & (GATHER | AWAIT_DONE):
            return status
    if steps & GATHER and kind == BROADCAST_SPLIT:  # the root wrote this reader's share
        written = _reached(table, _word(table, H_REDUCED), k, root, spins)
        status |= GATHERED if written else NOT_REDUCED
        if status & NOT_REDUCED or not steps & AWAIT_DONE:
            return status
    elif steps & GATHER:
        status |= _gather_slices(table, dst, k, spins)
        if status & (WAKE | NOT_REDUCED | UNREAD) or not steps & AWAIT_DONE:
            return status
    if steps & AWAIT_DONE:
        done = _reached(table, _word(table, H_DONE), k, -1, spins)
        status |= AWAITED if done else NOT_DONE
    return status


# What pieces() says: how many pieces took every step, times STATUS_SPAN, plus what piece()
# said of the piece it stopped at (0: none; it ran them all).
STATUS_SPAN = 1 << 16


@njit(inline="always")
def _through(steps):  # type: ignore[no-untyped-def]
    """What piece() says of a piece that took every one of ``steps`` (no peer asleep)."""
    status = 0
    if steps & PUBLISH:
        status |= PUBLISHED
    if steps & FINISH:
        status |= FINISHED
    if steps & GATHER:
        status |= GATHERED
    if steps & AWAIT_DONE:
        status |= AWAITED
    return status


@njit(inline="always")
def _piece_of(table, kind, src, dst, start, stop):  # type: ignore[no-untyped-def]
    """What of ``dst`` piece ``src[start:stop]`` lands in: the same elements, or for an
    all_gather from rank 0's part of that piece to the last rank's (the ranks' parts of
    ``dst`` lie as far apart as the input is long, where ``src`` and ``dst`` start at the
    same element of it)."""
    if kind != ALL_GATHER:
        return dst[start:stop]
    n = _word(table, H_SIZE)
    return dst[start : start + (n - 1) * _stride(n, src, dst) + stop - start]


@cached(nogil=True)
def pieces(table, src, dst, kind, k, step, op, root, steps, spins):  # type: ignore[no-untyped-def]
    """An operation too large for one piece (all_reduce, broadcast: ``src`` and ``dst``
    alike; all_gather: ``dst`` the output from where ``src`` goes in rank 0's part),
    ``step`` elements of ``src`` at a time as pieces ``k``, ``k + 1``, ... (each as
    :func:`piece` takes it, its size compared), without returning between pieces while
    each takes every one of ``steps``: at n=2, 32 pieces of a 16 MiB all_reduce cost 1-2 us
    of Python each. Returns how many pieces went through times STATUS_SPAN, plus what
    piece() said of the one it stopped at (the caller waits, wakes or raises there, then
    carries on with the piece after it)."""
    through = _through(steps)
    went = 0
    for start in range(0, src.size, step):
        stop = min(src.size, start + step)
        part, out = src[start:stop], _piece_of(table, kind, src, dst, start, stop)
        status = piece(table, part, out, kind, k + went, part.nbytes, op, root, steps, spins)
        if status != through:
            return went * STATUS_SPAN + status
        went += 1
    return went * STATUS_SPAN


def warm_cache(part: int = 0, parts: int = 1) -> None:
    """Compile (or load from numba's cache) piece and pieces for every dtype they take, or
    for every ``parts``-th of them from the ``part``-th (one process's share)."""
    if not AVAILABLE:
        return
    words = np.zeros(8, np.uint64)
    areas = np.zeros(2 * 16, np.uint8)
    table = np.zeros(FIRST + FIELDS, np.uint64)
    table[H_SIZE], table[H_RANK], table[H_READY], table[H_SIZE_WORD] = 1, 0, 1, 2
    table[H_DONE], table[H_COUNTER_WORDS], table[H_ADDRESS] = 4, words.size, 5
    scratch = np.zeros(64, np.uint8)
    table[H_SCRATCH], table[H_SCRATCH_BYTES] = scratch.__array_interface__["data"][0], 64
    table[FIRST + F_COUNTERS] = words.__array_interface__["data"][0]
    table[FIRST + F_AREA0] = areas.__array_interface__["data"][0]
    table[FIRST + F_AREA1] = table[FIRST + F_AREA0] + 16
    for k, dtype in enumerate(sorted(DTYPES, key=str)[part::parts], 1):
        a = np.ones(2, dtype)
        steps = PUBLISH | COPY | FINISH
        k = 3 * k  # (each dtype numbers three pieces: one, then two more in pieces)
        assert (
            piece(table, a, a, ALL_REDUCE, k, a.nbytes, SUM, -1, steps, 0) == PUBLISHED | FINISHED
        )
        went = pieces(table, a, a, ALL_REDUCE, k + 1, 1, SUM, -1, steps, 0)
        assert went == 2 * STATUS_SPAN, went
