"""Test data: the dtypes and reduce ops the tests cover, deterministic inputs, and numpy
references to check results against."""

from __future__ import annotations

import functools

import numpy as np

import ringcomm

DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)
OPS = tuple(ringcomm.ReduceOp)


def op_applies(op: ringcomm.ReduceOp, dtype: str) -> bool:
    """Whether ringcomm accepts ``op`` on ``dtype`` (the validation rules)."""
    floating = dtype.startswith("float") or dtype == "bfloat16"
    if op == ringcomm.AVG:
        return floating
    if op in (ringcomm.BAND, ringcomm.BOR, ringcomm.BXOR):
        return not floating
    return True


def make_input(
    dtype: str, op: ringcomm.ReduceOp, rank: int, count: int, seed: int = 0
) -> np.ndarray:
    """Rank ``rank``'s input: small integers, exact in every dtype and in any order of
    reduction, so results can be compared bit for bit (AVG aside)."""
    rng = np.random.default_rng(seed * 1000 + rank)
    if dtype == "bool":
        return rng.integers(0, 2, count).astype(bool)
    if op == ringcomm.PROD:
        lo, hi = (1, 3) if dtype.startswith("u") else (-1, 3)
        vals = rng.integers(lo, hi, count)
        vals[vals == 0] = 1
    elif dtype.startswith("u") or op in (ringcomm.BAND, ringcomm.BOR, ringcomm.BXOR):
        vals = rng.integers(0, 16, count)
    else:
        vals = rng.integers(-8, 9, count)
    return vals.astype(dtype)


_UFUNC = {
    ringcomm.SUM: np.add,
    ringcomm.AVG: np.add,
    ringcomm.PROD: np.multiply,
    ringcomm.MIN: np.minimum,
    ringcomm.MAX: np.maximum,
    ringcomm.BAND: np.bitwise_and,
    ringcomm.BOR: np.bitwise_or,
    ringcomm.BXOR: np.bitwise_xor,
}


def reference(op: ringcomm.ReduceOp, arrays: list[np.ndarray]) -> np.ndarray:
    """The reduction of ``arrays`` by numpy, in the arrays' dtype (wrapping like C)."""
    if arrays[0].dtype == bool:
        bool_ufunc = {
            ringcomm.SUM: np.logical_or,
            ringcomm.MAX: np.logical_or,
            ringcomm.PROD: np.logical_and,
            ringcomm.MIN: np.logical_and,
            ringcomm.BAND: np.logical_and,
            ringcomm.BOR: np.logical_or,
            ringcomm.BXOR: np.logical_xor,
        }[op]
        return functools.reduce(bool_ufunc, arrays)
    out = functools.reduce(_UFUNC[op], arrays)
    if op == ringcomm.AVG:
        out = (out / out.dtype.type(len(arrays))).astype(arrays[0].dtype)
    return out


def assert_reduced(got: np.ndarray, want: np.ndarray, op: ringcomm.ReduceOp, what: str) -> None:
    """Exact equality, except AVG on floats (one rounding may differ)."""
    if op == ringcomm.AVG:
        np.testing.assert_allclose(
            got.astype(np.float64), want.astype(np.float64), rtol=1e-3, err_msg=what
        )
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


def round_to_16_bits(x: np.ndarray, name: str) -> np.ndarray:
    """float32 ``x`` rounded to float16 or bfloat16 (to nearest even) and widened back,
    written here with numpy alone (the reference for all_reduce's compression)."""
    x = np.asarray(x, np.float32)
    if name == "float16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    top = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
    return (top << 16).view(np.float32)
