"""Numba CPU reduction kernels: the hot loops of every collective.

Every kernel works on flat, contiguous numpy arrays of one dtype and runs with the GIL
released (``nogil=True``), so a rank reduces segment k while ZeroMQ's I/O thread moves
segment k+1. Two 16-bit float formats have no numba CPU type and travel as ``uint16``
bit patterns: bfloat16 (torch) and float16 (numba has no CPU float16). Both are widened
to float32, reduced, and rounded once (round to nearest even) per element and call.

Each kernel has a NumPy twin in ``numpy_fallback`` used when numba is disabled
(``NUMBA_DISABLE_JIT=1``); the tests check the two against each other.
"""

from __future__ import annotations

import os
import platform

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import numpy_fallback
from .cache import cached
from .ops import AVG, BAND, BOR, BXOR, MAX, MIN, NATIVE_DTYPES, PROD, SUM

# 16-bit floats are widened in blocks of this many elements: O(1) scratch per call.
_BLOCK = 2048

_JIT = cached(nogil=True)  # (numba's cache=True, its writes under a lock)
_NUMBA_OFF = bool(numba.config.DISABLE_JIT)


@_JIT
def _sum(dst, src):
    for i in range(dst.shape[0]):
        dst[i] += src[i]


@_JIT
def _prod(dst, src):
    for i in range(dst.shape[0]):
        dst[i] *= src[i]


@_JIT
def _min(dst, src):
    for i in range(dst.shape[0]):
        s = src[i]
        if s < dst[i] or s != s:  # s != s: NaN propagates, as in np.minimum
            dst[i] = s


@_JIT
def _max(dst, src):
    for i in range(dst.shape[0]):
        s = src[i]
        if s > dst[i] or s != s:
            dst[i] = s


@_JIT
def _band(dst, src):
    for i in range(dst.shape[0]):
        dst[i] &= src[i]


@_JIT
def _bor(dst, src):
    for i in range(dst.shape[0]):
        dst[i] |= src[i]


@_JIT
def _bxor(dst, src):
    for i in range(dst.shape[0]):
        dst[i] ^= src[i]


@_JIT
def _apply_arithmetic(dst, src, op):
    """The arithmetic ops, on any dtype: float32 blocks of widened 16-bit floats, the
    board's native pieces (native.board)."""
    if op == SUM or op == AVG:  # noqa: SIM109 (numba: plain comparisons)
        _sum(dst, src)
    elif op == PROD:
        _prod(dst, src)
    elif op == MIN:
        _min(dst, src)
    else:
        _max(dst, src)


# -- 16-bit floats ----------------------------------------------------------------------------
# Kernels see both as uint16 bit patterns and work in float32: widen, compute, round once to
# nearest even. float16 converts in hardware where the CPU has it (x86 F16C, every aarch64:
# LLVM's half type, one instruction per 8 elements), else with integer selects (F. Giesen's
# conversions, public domain) that LLVM still vectorises; bfloat16 is a shift either way.
_HARDWARE_HALF = (
    platform.machine().lower() in ("aarch64", "arm64")
    or "+f16c" in llvm.get_host_cpu_features().flatten().split(",")
) and not os.environ.get("RINGCOMM_PORTABLE_HALF")  # tests of the other path; they give it
# its own NUMBA_CACHE_DIR, since numba's cache does not key on this choice


@intrinsic
def _bits(typingctx, x):  # type: ignore[no-untyped-def]
    """A float32's bit pattern (a uint32)."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _float(typingctx, u):  # type: ignore[no-untyped-def]
    """The float32 with bit pattern ``u`` (a uint32)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _half_in_hw(typingctx, h):  # type: ignore[no-untyped-def]
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def _half_out_hw(typingctx, x):  # type: ignore[no-untyped-def]
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return sig, codegen


@njit(inline="always")
def _half_in_sw(bits):  # type: ignore[no-untyped-def]
    h = np.uint32(bits)
    em = h & np.uint32(0x7FFF)
    x = (em << np.uint32(13)) + np.uint32(0x38000000)
    x = x + np.uint32(0x38000000) if em >= np.uint32(0x7C00) else x  # inf, NaN
    # zero and subnormals: (1 + m/1024) * 2**-14 - 2**-14 = m * 2**-24, exactly
    sub = _bits(_float(x + np.uint32(0x00800000)) - np.float32(6.103515625e-05))
    x = sub if em < np.uint32(0x0400) else x
    return _float(((h & np.uint32(0x8000)) << np.uint32(16)) | x)


@njit(inline="always")
def _half_out_sw(value):  # type: ignore[no-untyped-def]
    x = _bits(value)
    a = x & np.uint32(0x7FFFFFFF)
    m = a - np.uint32(0x38000000)
    h = (m + np.uint32(0x0FFF) + ((m >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
    h = min(h, np.uint32(0x7C00))  # from 65520 up: inf
    # below 2**-14, a half subnormal: adding 0.5 rounds to a multiple of 2**-24
    sub = _bits(_float(a) + np.float32(0.5)) - np.uint32(0x3F000000)
    h = sub if a < np.uint32(0x38800000) else h
    nan = np.uint32(0x7E00) if a > np.uint32(0x7F800000) else np.uint32(0x7C00)
    h = nan if a >= np.uint32(0x7F800000) else h
    return np.uint16(((x >> np.uint32(16)) & np.uint32(0x8000)) | h)


_half_in = _half_in_hw if _HARDWARE_HALF else _half_in_sw
_half_out = _half_out_hw if _HARDWARE_HALF else _half_out_sw


@njit(inline="always")
def _bf16_in(bits):  # type: ignore[no-untyped-def]
    return _float(np.uint32(bits) << np.uint32(16))


@njit(inline="always")
def _bf16_out(value):  # type: ignore[no-untyped-def]
    x = _bits(value)
    rounded = (x + np.uint32(0x7FFF) + ((x >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    quiet = (x >> np.uint32(16)) | np.uint32(0x40)  # NaN stays a quiet NaN
    return np.uint16(quiet if (x & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rounded)


@_JIT
def _widen16(bits, out, is_bf16):
    if is_bf16:
        for j in range(bits.shape[0]):
            out[j] = _bf16_in(bits[j])
    else:
        for j in range(bits.shape[0]):
            out[j] = _half_in(bits[j])


@_JIT
def _narrow16(values, out_bits, factor, is_bf16):
    f = np.float32(factor)
    if is_bf16:
        for j in range(values.shape[0]):
            out_bits[j] = _bf16_out(values[j] * f)
    else:
        for j in range(values.shape[0]):
            out_bits[j] = _half_out(values[j] * f)


@_JIT
def _add_widened(acc, bits, is_bf16):
    if is_bf16:
        for j in range(acc.shape[0]):
            acc[j] += _bf16_in(bits[j])
    else:
        for j in range(acc.shape[0]):
            acc[j] += _half_in(bits[j])


@_JIT
def _apply_half(dst, src, op, is_bf16):
    """Reduce 16-bit float bit patterns: widen to float32, reduce, round once."""
    n = dst.shape[0]
    if op in (SUM, AVG):  # the common case, in one pass
        if is_bf16:
            for j in range(n):
                dst[j] = _bf16_out(_bf16_in(dst[j]) + _bf16_in(src[j]))
        else:
            for j in range(n):
                dst[j] = _half_out(_half_in(dst[j]) + _half_in(src[j]))
        return
    a = np.empty(_BLOCK, np.float32)
    b = np.empty(_BLOCK, np.float32)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        k = stop - start
        _widen16(dst[start:stop], a, is_bf16)
        _widen16(src[start:stop], b, is_bf16)
        _apply_arithmetic(a[:k], b[:k], op)
        _narrow16(a[:k], dst[start:stop], 1.0, is_bf16)


@_JIT
def _divide(arr, divisor):
    # In the array's own type: float32 / int64 would divide in float64, 2.6x slower here
    # (and no more exact: float32's quotient is correctly rounded either way).
    d = arr.dtype.type(divisor)
    for i in range(arr.shape[0]):
        arr[i] = arr[i] / d


@_JIT
def _divide_half(arr, divisor, is_bf16):
    d = np.float32(divisor)
    if is_bf16:
        for j in range(arr.shape[0]):
            arr[j] = _bf16_out(_bf16_in(arr[j]) / d)
    else:
        for j in range(arr.shape[0]):
            arr[j] = _half_out(_half_in(arr[j]) / d)


@_JIT
def _byte_offset(start, at):
    return np.int64(at.ctypes.data) - np.int64(start.ctypes.data)


def byte_offset(start: np.ndarray, at: np.ndarray) -> int:
    """How many bytes after ``start``'s first byte ``at``'s first byte lies (negative:
    before). A numba call, about 0.2 us, where numba compiles it for both dtypes: numpy
    tells an address in 0.8-1 us."""
    if not _NUMBA_OFF and start.dtype not in _UNTYPED and at.dtype not in _UNTYPED:
        try:
            return int(_byte_offset(start, at))
        except Exception:  # numba has no CPU type for it (float16, among others)
            _UNTYPED.update((start.dtype, at.dtype))
    return int(at.ctypes.data) - int(start.ctypes.data)


_UNTYPED: set[np.dtype] = set()  # dtypes byte_offset found numba compiles nothing for


_KERNELS = {
    SUM: _sum,
    PROD: _prod,
    MIN: _min,
    MAX: _max,
    AVG: _sum,
    BAND: _band,
    BOR: _bor,
    BXOR: _bxor,
}
# bool has two values: SUM and MAX are OR, PROD and MIN are AND.
_BOOL_KERNELS = {SUM: _bor, PROD: _band, MIN: _band, MAX: _bor, BAND: _band, BOR: _bor, BXOR: _bxor}


def reduce_into(dst: np.ndarray, src: np.ndarray, op: int, bfloat16: bool = False) -> None:
    """Reduce ``src`` into ``dst`` in place: ``dst = dst (op) src``, element by element.

    Args:
        dst: flat contiguous array, overwritten with the result.
        src: flat array of the same dtype and length (may be read-only, e.g. a received frame).
        op: one of the op codes ``SUM`` .. ``BXOR``. AVG reduces as SUM; divide afterwards
            with :func:`divide`.
        bfloat16: ``dst``/``src`` are ``uint16`` arrays holding bfloat16 bit patterns.
    """
    if _NUMBA_OFF:
        numpy_fallback.reduce_into(dst, src, op, bfloat16)
    elif bfloat16 or dst.dtype == np.float16:
        _apply_half(dst.view(np.uint16), src.view(np.uint16), op, bfloat16)
    elif dst.dtype == np.bool_:
        _BOOL_KERNELS[op](dst.view(np.uint8), src.view(np.uint8))
    else:
        _KERNELS[op](dst, src)


def divide(arr: np.ndarray, divisor: int, bfloat16: bool = False) -> None:
    """Divide a floating array in place by ``divisor`` (the last step of AVG)."""
    if _NUMBA_OFF:
        numpy_fallback.divide(arr, divisor, bfloat16)
    elif bfloat16 or arr.dtype == np.float16:
        _divide_half(arr.view(np.uint16), divisor, bfloat16)
    else:
        _divide(arr, divisor)


def narrow(values: np.ndarray, out_bits: np.ndarray, bfloat16: bool, factor: float = 1.0) -> None:
    """Round ``values * factor`` (float32) to 16-bit floats: ``out_bits`` (``uint16``, as
    long) gets bfloat16 bit patterns if ``bfloat16``, else float16's; to nearest even, NaN
    stays NaN, float16 overflows to inf (as numpy's and torch's casts)."""
    if _NUMBA_OFF:
        numpy_fallback.narrow(values, out_bits, bfloat16, factor)
    else:
        _narrow16(values, out_bits, factor, bfloat16)


def widen(bits: np.ndarray, out: np.ndarray, bfloat16: bool) -> None:
    """Widen 16-bit float bit patterns (``uint16``; bfloat16 or float16) into float32
    ``out`` (exact)."""
    if _NUMBA_OFF:
        numpy_fallback.widen(bits, out, bfloat16)
    else:
        _widen16(bits, out, bfloat16)


def add_widened(acc: np.ndarray, bits: np.ndarray, bfloat16: bool) -> None:
    """``acc += bits``: float32 ``acc`` plus 16-bit float bit patterns, widened."""
    if _NUMBA_OFF:
        numpy_fallback.add_widened(acc, bits, bfloat16)
    else:
        _add_widened(acc, bits, bfloat16)


def warm_cache() -> None:
    """Compile (or load from numba's on-disk cache) every kernel for every dtype.

    Running this once before a many-process launch spares each rank its own compile.
    """
    if _NUMBA_OFF:
        return
    for name in NATIVE_DTYPES:
        a = np.ones(2, name)
        for op, kernel in _KERNELS.items():
            if a.dtype.kind == "f" and op in (BAND, BOR, BXOR):
                continue
            kernel(a, a.copy())
        if a.dtype.kind == "f":
            _divide(a, 2)
        read_only = a[1:]
        read_only.flags.writeable = False
        byte_offset(a, read_only)  # (an in-place input, read only or not)
        byte_offset(a, a)
    h = np.zeros(2, np.uint16)
    for is_bf16 in (True, False):
        for op in (SUM, PROD, MIN, MAX):
            _apply_half(h, h.copy(), op, is_bf16)
        _divide_half(h, 2, is_bf16)
        f = np.zeros(2, np.float32)
        _narrow16(f, h, 0.5, is_bf16)
        _widen16(h, f, is_bf16)
        _add_widened(f, h, is_bf16)
