"""Acquire/release access to counters that other processes share (the shared-memory
transport).

A sender writes a segment into shared memory and then bumps a counter; the receiver reads
the counter and then the segment. The store must not become visible before the data, nor
the data be read before the counter: on x86 plain stores and loads already keep that order,
on ARM they do not. These loads and stores are LLVM atomics with acquire/release ordering,
so the protocol holds on both. Each call costs one numba dispatch (~0.2 us).
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cache import cached

_NUMBA_OFF = bool(numba.config.DISABLE_JIT)


@intrinsic
def _load_acquire(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    sig = types.uint64(arr, idx)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [args[1]])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def _store_release(typingctx, arr, idx, value):  # type: ignore[no-untyped-def]
    sig = types.void(arr, idx, value)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [args[1]])
        val = context.cast(builder, args[2], signature.args[2], types.uint64)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_seq_cst(typingctx, arr, idx, value):  # type: ignore[no-untyped-def]
    # On x86 an xchg, a full barrier; measured 0.2 us a call, against 4.5 us for a
    # release store followed by a seq_cst fence (mfence) on shared pages here.
    sig = types.void(arr, idx, value)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [args[1]])
        val = context.cast(builder, args[2], signature.args[2], types.uint64)
        builder.store_atomic(val, ptr, "seq_cst", 8)
        return context.get_dummy_value()

    return sig, codegen


@cached(nogil=True)
def _jit_load(arr, i):  # type: ignore[no-untyped-def]
    return _load_acquire(arr, i)


@cached(nogil=True)
def _jit_store(arr, i, value):  # type: ignore[no-untyped-def]
    _store_release(arr, i, value)


@cached(nogil=True)
def _jit_store_fenced(arr, i, value):  # type: ignore[no-untyped-def]
    _store_seq_cst(arr, i, value)


# x86 keeps loads in order with loads and stores with stores (TSO), so there a plain load
# already acquires and a plain store releases (each is one opaque C call, which no compiler
# reorders): ten times cheaper than a numba call (0.05 against 0.5 us), which matters on
# the small-message path. Elsewhere (ARM) the LLVM atomics above.
_TSO = platform.machine() in ("x86_64", "AMD64", "i386", "i686")


def load_acquire(counters: np.ndarray, i: int) -> int:
    """``counters[i]`` (uint64 array); later reads see what was written before its store."""
    if _TSO or _NUMBA_OFF:
        return counters.item(i)  # type: ignore[no-any-return]
    return int(_jit_load(counters, i))


def store_release(counters: np.ndarray, i: int, value: int) -> None:
    """``counters[i] = value``, visible only after every earlier write of this thread."""
    if _TSO or _NUMBA_OFF:
        counters[i] = value
    else:
        _jit_store(counters, i, value)


def store_fenced(counters: np.ndarray, i: int, value: int) -> None:
    """A sequentially consistent store: like :func:`store_release`, and later loads of
    this thread are not answered before it is visible (the sleep/wake handshake needs
    that)."""
    if _NUMBA_OFF:
        counters[i] = value
    else:
        _jit_store_fenced(counters, i, value)


def warm_cache() -> None:
    """Compile (or load from cache) the counter functions."""
    if _NUMBA_OFF:
        return
    a = np.zeros(1, np.uint64)
    store_release(a, 0, 1)
    store_fenced(a, 0, 2)
    assert load_acquire(a, 0) == 2
