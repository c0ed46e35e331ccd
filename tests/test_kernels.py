"""The numba kernels against numpy, op by op and dtype by dtype; 16-bit float conversions."""

from __future__ import annotations

import numpy as np
import pytest

from data import DTYPES, OPS, make_input, op_applies, reference
from ringcomm import native
from ringcomm.native import numpy_fallback

APPLICABLE = [(d, o) for d in DTYPES for o in OPS if op_applies(o, d)]


@pytest.mark.parametrize(("dtype", "op"), APPLICABLE, ids=[f"{d}-{o.name}" for d, o in APPLICABLE])
def test_reduce_into_matches_numpy(dtype: str, op: int) -> None:
    a, b = make_input(dtype, op, 0, 4099), make_input(dtype, op, 1, 4099)
    want = reference(op, [a, b]) if op != native.AVG else reference(native.SUM, [a, b])
    for impl in (native.reduce_into, numpy_fallback.reduce_into):
        got = a.copy()
        impl(got, b, op)
        np.testing.assert_array_equal(got, want, err_msg=impl.__module__)


@pytest.mark.parametrize("op", [native.MIN, native.MAX])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_min_max_propagate_nan(op: int, dtype: str) -> None:
    a = np.array([1, np.nan, 3, np.nan], dtype)
    b = np.array([np.nan, 2, 1, np.nan], dtype)
    got = a.copy()
    native.reduce_into(got, b, op)
    want = (np.minimum if op == native.MIN else np.maximum)(a, b)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(got)], want[~np.isnan(want)])


def test_float16_sum_rounds_once_like_numpy() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal(100_000).astype(np.float16) * np.float16(100)
    b = rng.standard_normal(100_000).astype(np.float16)
    for op in (native.SUM, native.PROD, native.MIN, native.MAX):
        got = a.copy()
        native.reduce_into(got, b, op)
        want = {
            native.SUM: np.add,
            native.PROD: np.multiply,
            native.MIN: np.minimum,
            native.MAX: np.maximum,
        }[op](a, b)
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_float16_all_bit_patterns_survive_widen_and_narrow() -> None:
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    zero = np.zeros_like(bits)
    got = bits.copy()
    native.reduce_into(got.view(np.float16), (zero | 0x8000).view(np.float16), native.SUM)
    # x + (-0.0) == x for every x (NaNs stay NaN)
    with np.errstate(invalid="ignore"):
        want = bits.view(np.float16) + np.float16(-0.0)
    nan = np.isnan(want)
    np.testing.assert_array_equal(got[~nan], want.view(np.uint16)[~nan])
    assert np.isnan(got.view(np.float16)[nan]).all()


def test_float16_overflow_and_subnormals() -> None:
    a = np.array([60000, 65504, 6e-8, -6e-8, 1e-5, 0], np.float16)
    b = np.array([10000, 65504, 6e-8, 6e-8, 2e-5, -0.0], np.float16)
    got = a.copy()
    native.reduce_into(got, b, native.SUM)
    with np.errstate(over="ignore"):
        want = a + b
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: widen by shifting (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bits, to nearest with ties to even, written out here so the
    reference owes nothing to the code under test: add 0x7FFF plus the lowest kept bit,
    then drop the low 16 bits. NaNs stay (quiet) NaNs."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def _bf16_reference(a_bits: np.ndarray, b_bits: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return _f32_to_bf16_bits(ufunc(_bf16_bits_to_f32(a_bits), _bf16_bits_to_f32(b_bits)))


def test_bfloat16_reference_agrees_with_torch() -> None:
    """The hand-written rounding above is torch's (where torch is installed)."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal(100_000).astype(np.float32) * 1000
    x[:4] = [1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, np.inf, -0.0]  # ties to even; specials
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(_f32_to_bf16_bits(x), theirs)


@pytest.mark.parametrize("op", [native.SUM, native.PROD, native.MIN, native.MAX])
def test_bfloat16_reduces_in_fp32_and_rounds_once(op: int) -> None:
    rng = np.random.default_rng(2)
    a = _f32_to_bf16_bits(rng.standard_normal(50_001).astype(np.float32) * 1000)
    b = _f32_to_bf16_bits(rng.standard_normal(50_001).astype(np.float32))
    ufunc = {
        native.SUM: np.add,
        native.PROD: np.multiply,
        native.MIN: np.minimum,
        native.MAX: np.maximum,
    }[op]
    want = _bf16_reference(a, b, ufunc)
    for impl in (native.reduce_into, numpy_fallback.reduce_into):
        got = a.copy()
        impl(got, b, op, True)
        np.testing.assert_array_equal(got, want)


def test_bfloat16_rounding_is_to_nearest_even() -> None:
    # 1 + 2**-8 is halfway between bf16 neighbours 1 and 1 + 2**-7: ties go to even (1.0)
    one = _f32_to_bf16_bits(np.array([1.0], np.float32))
    half_ulp = _f32_to_bf16_bits(np.array([2.0**-8], np.float32))
    got = one.copy()
    native.reduce_into(got, half_ulp, native.SUM, True)
    assert _bf16_bits_to_f32(got)[0] == 1.0
    three_halves = _f32_to_bf16_bits(np.array([3 * 2.0**-8], np.float32))
    got = one.copy()
    native.reduce_into(got, three_halves, native.SUM, True)
    assert _bf16_bits_to_f32(got)[0] == 1.0 + 2.0**-6  # the even neighbour


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_divide(dtype: str) -> None:
    vals = np.arange(-50, 50, dtype=np.float32) * 3
    if dtype == "bfloat16":
        arr = _f32_to_bf16_bits(vals)
        native.divide(arr, 3, True)
        np.testing.assert_allclose(_bf16_bits_to_f32(arr), vals / 3, rtol=1e-2)
    else:
        arr = vals.astype(dtype)
        native.divide(arr, 3)
        np.testing.assert_array_equal(arr, vals.astype(dtype) / np.array(3, dtype))


def _numpy_narrow(x: np.ndarray, bfloat16: bool) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return _f32_to_bf16_bits(x) if bfloat16 else x.astype(np.float16).view(np.uint16)


def _odd_floats() -> np.ndarray:
    """Random float32 bit patterns (every exponent, NaNs, infinities), gradient-like values
    from 1e-9 to 1e5, and the edges of float16: its largest, what rounds to inf, subnormals,
    ties."""
    rng = np.random.default_rng(4)
    patterns = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32)
    scaled = rng.standard_normal(300_000) * 10.0 ** rng.integers(-9, 6, 300_000)
    edges = [0, -0.0, 65504, 65519.99, 65520, 65536, 1e9, np.inf, -np.inf, np.nan, 2.0**-14,
             2.0**-14 * 0.999, 2.0**-24, 2.0**-25, 2.0**-25 * 1.001, 3 * 2.0**-25, 1e-10,
             1 + 2.0**-11, 1 + 3 * 2.0**-11, -3e-6]  # fmt: skip
    return np.concatenate([patterns.view(np.float32), scaled.astype(np.float32), edges]).astype(
        np.float32
    )


@pytest.mark.parametrize("bfloat16", [False, True], ids=["float16", "bfloat16"])
def test_narrow_and_widen_round_as_numpy_does(bfloat16: bool) -> None:
    """narrow (float32 -> 16 bits, times a factor) rounds every value as numpy's cast, NaN
    stays NaN; widen is exact for every 16-bit pattern; add_widened adds the widened bits
    (both implementations)."""
    x = _odd_floats()
    nan = np.isnan(x)
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    exact = (every.astype(np.uint32) << 16).view(np.float32) if bfloat16 else None
    if exact is None:
        exact = every.view(np.float16).astype(np.float32)
    for impl in (native.kernels, numpy_fallback):
        for factor in (1.0, 0.25):
            got = np.empty(x.size, np.uint16)
            with np.errstate(over="ignore", invalid="ignore"):
                impl.narrow(x, got, bfloat16, factor)
                want = _numpy_narrow(x * np.float32(factor), bfloat16)
            np.testing.assert_array_equal(got[~nan], want[~nan], err_msg=impl.__name__)
            wide = np.empty(x.size, np.float32)
            impl.widen(got[nan], wide[: nan.sum()], bfloat16)
            assert np.isnan(wide[: nan.sum()]).all()
        wide = np.empty(65536, np.float32)
        impl.widen(every, wide, bfloat16)
        same = (wide.view(np.uint32) == exact.view(np.uint32)) | np.isnan(exact)
        assert same.all() and np.isnan(wide[np.isnan(exact)]).all(), impl.__name__
        acc = np.linspace(-1, 1, 65536, dtype=np.float32)
        finite = np.isfinite(exact)
        impl.add_widened(acc, every, bfloat16)
        np.testing.assert_array_equal(
            acc[finite], np.linspace(-1, 1, 65536, dtype=np.float32)[finite] + exact[finite]
        )


def test_portable_half_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Hosts without hardware float16 conversion (x86 without F16C) use integer selects:
    the float16 tests above, run again on that path (its own numba cache; without the
    conftest, whose warm-up would compile the board's calls too, which these tests do not
    use: minutes on a slow machine)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, RINGCOMM_PORTABLE_HALF="1", NUMBA_CACHE_DIR=str(tmp_path))
    code = (
        "import sys, pytest; from ringcomm.native import kernels;"
        "assert not kernels._HARDWARE_HALF;"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--noconftest', '-k',"
        " 'float16 or narrow or divide or test_reduce_into_matches_numpy', sys.argv[1]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(__file__),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


@pytest.mark.parametrize("dtype", ["float32", "int64", "uint8", "float16"])
def test_byte_offset_is_the_distance_between_first_bytes(dtype: str) -> None:
    whole = np.zeros(64, dtype)
    part = whole[10:20]
    fixed = whole[5:]
    fixed.flags.writeable = False  # an all_gather's input may be read-only
    for start, at in ((whole, part), (part, whole), (whole, fixed), (whole, whole)):
        want = at.ctypes.data - start.ctypes.data
        assert native.byte_offset(start, at) == want
