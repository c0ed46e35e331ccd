"""NumPy twins of the numba kernels, used when numba is disabled (``NUMBA_DISABLE_JIT=1``).

NumPy's ufuncs release the GIL too; 16-bit floats are widened to float32 in blocks, so the
scratch stays O(1) per call, and rounded once, exactly like the numba kernels.
"""

from __future__ import annotations

import numpy as np

from .ops import AVG, BAND, BOR, BXOR, MAX, MIN, PROD, SUM

_BLOCK = 1 << 16
_UFUNCS = {
    SUM: np.add,
    AVG: np.add,
    PROD: np.multiply,
    MIN: np.minimum,
    MAX: np.maximum,
    BAND: np.bitwise_and,
    BOR: np.bitwise_or,
    BXOR: np.bitwise_xor,
}
_BOOL_UFUNCS = {
    SUM: np.logical_or,
    MAX: np.logical_or,
    PROD: np.logical_and,
    MIN: np.logical_and,
    BAND: np.logical_and,
    BOR: np.logical_or,
    BXOR: np.logical_xor,
}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bit patterns, to nearest even; NaN stays NaN."""
    x = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = ((x + np.uint32(0x7FFF) + ((x >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    rounded[nan] = ((x[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def _widen(bits: np.ndarray, bfloat16: bool) -> np.ndarray:
    return bf16_to_f32(bits) if bfloat16 else bits.view(np.float16).astype(np.float32)


def _narrow(values: np.ndarray, out_bits: np.ndarray, bfloat16: bool) -> None:
    out_bits[:] = f32_to_bf16(values) if bfloat16 else values.astype(np.float16).view(np.uint16)


def reduce_into(dst: np.ndarray, src: np.ndarray, op: int, bfloat16: bool = False) -> None:
    """Same contract as :func:`ringcomm.native.reduce_into`."""
    if bfloat16 or dst.dtype == np.float16:
        d, s = dst.view(np.uint16), src.view(np.uint16)
        for i in range(0, d.size, _BLOCK):
            a = _widen(d[i : i + _BLOCK], bfloat16)
            _UFUNCS[op](a, _widen(s[i : i + _BLOCK], bfloat16), out=a)
            _narrow(a, d[i : i + _BLOCK], bfloat16)
    elif dst.dtype == np.bool_:
        _BOOL_UFUNCS[op](dst, src, out=dst)
    else:
        _UFUNCS[op](dst, src, out=dst)


def divide(arr: np.ndarray, divisor: int, bfloat16: bool = False) -> None:
    """Same contract as :func:`ringcomm.native.divide`."""
    if bfloat16 or arr.dtype == np.float16:
        bits = arr.view(np.uint16)
        for i in range(0, bits.size, _BLOCK):
            a = _widen(bits[i : i + _BLOCK], bfloat16)
            np.divide(a, np.float32(divisor), out=a)
            _narrow(a, bits[i : i + _BLOCK], bfloat16)
    else:
        np.divide(arr, arr.dtype.type(divisor), out=arr)


def narrow(values: np.ndarray, out_bits: np.ndarray, bfloat16: bool, factor: float = 1.0) -> None:
    """Same contract as :func:`ringcomm.native.kernels.narrow`."""
    for i in range(0, values.size, _BLOCK):
        scaled = values[i : i + _BLOCK] * np.float32(factor)
        _narrow(scaled, out_bits[i : i + _BLOCK], bfloat16)


def widen(bits: np.ndarray, out: np.ndarray, bfloat16: bool) -> None:
    """Same contract as :func:`ringcomm.native.kernels.widen`."""
    for i in range(0, bits.size, _BLOCK):
        out[i : i + _BLOCK] = _widen(bits[i : i + _BLOCK], bfloat16)


def add_widened(acc: np.ndarray, bits: np.ndarray, bfloat16: bool) -> None:
    """Same contract as :func:`ringcomm.native.kernels.add_widened`."""
    for i in range(0, bits.size, _BLOCK):
        acc[i : i + _BLOCK] += _widen(bits[i : i + _BLOCK], bfloat16)
