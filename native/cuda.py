"""Device kernels (``cuda_kernels.cu``), compiled at run time through CuPy (NVRTC).

Nothing here imports CuPy until a kernel is first used, so ``ringcomm.native`` stays
importable without CUDA. Arrays are flat, contiguous CuPy arrays; 16-bit floats are passed
as ``uint16`` bit patterns with ``half`` naming which format ("float16" or "bfloat16").
Every launch goes on the given stream (default: CuPy's current one).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .ops import AVG, BAND, BOR, BXOR, MAX, MIN, PROD, SUM

SOURCE = Path(__file__).with_name("cuda_kernels.cu")
_OP_NAMES = {
    SUM: "sum",
    PROD: "prod",
    MIN: "min",
    MAX: "max",
    BAND: "band",
    BOR: "bor",
    BXOR: "bxor",
}
# bool has two values: SUM and MAX are OR, PROD and MIN are AND (as on the host).
_BOOL_OPS = {SUM: BOR, PROD: BAND, MIN: BAND, MAX: BOR, BAND: BAND, BOR: BOR, BXOR: BXOR}
_THREADS = 256


@functools.cache
def _module() -> Any:
    import cupy

    return cupy.RawModule(code=SOURCE.read_text())


@functools.cache
def _kernel(name: str) -> Any:
    return _module().get_function(name)


def _grid(n: int) -> tuple[int]:
    # Enough blocks to fill any current GPU; the grid-stride loop covers the rest.
    return (max(1, min((n + _THREADS - 1) // _THREADS, 65536)),)


def _launch(name: str, n: int, args: tuple[Any, ...], stream: Any) -> None:
    if n == 0:
        return
    kernel = _kernel(name)
    if stream is None:
        kernel(_grid(n), (_THREADS,), args)
    else:
        with stream:  # CuPy launches on the current stream
            kernel(_grid(n), (_THREADS,), args)


def type_name(array: Any, half: str | None) -> str:
    """The kernel suffix for ``array`` ("float32", "bfloat16", ...)."""
    return half if half is not None else str(array.dtype)


def reduce_into(out: Any, other: Any, op: int, half: str | None = None, stream: Any = None) -> None:
    """``out = out (op) other`` elementwise on the device (AVG reduces as SUM; divide after).

    Raises:
        TypeError: a bitwise op on floats.
    """
    import numpy as np

    if op == AVG:
        op = SUM
    if half is None and out.dtype == np.bool_:
        op, out, other = _BOOL_OPS[op], out.view(np.uint8), other.view(np.uint8)
    name = type_name(out, half)
    if op in (BAND, BOR, BXOR) and (half is not None or out.dtype.kind == "f"):
        raise TypeError(f"{_OP_NAMES[op]} is for integers, not {name}")
    n = out.size
    _launch(f"reduce_{_OP_NAMES[op]}_{name}", n, (out, other, np.uint64(n)), stream)


def scale(x: Any, factor: float, half: str | None = None, stream: Any = None) -> None:
    """``x *= factor`` in place (floating types only)."""
    import numpy as np

    name = type_name(x, half)
    f = np.float64(factor) if name == "float64" else np.float32(factor)
    _launch(f"scale_{name}", x.size, (x, f, np.uint64(x.size)), stream)


def narrow(src: Any, dst: Any, half: str, factor: float = 1.0, stream: Any = None) -> None:
    """``dst = half(src * factor)``: float32 to float16/bfloat16 bits, one pass."""
    import numpy as np

    _launch(f"narrow_{half}", src.size, (src, dst, np.float32(factor), np.uint64(src.size)), stream)


def widen(src: Any, dst: Any, half: str, stream: Any = None) -> None:
    """``dst = float32(src)``: float16/bfloat16 bits to float32."""
    import numpy as np

    _launch(f"widen_{half}", src.size, (src, dst, np.uint64(src.size)), stream)


def compile_all() -> None:
    """Compile the module now (NVRTC), so the first collective does not pay for it."""
    _module().get_function("reduce_sum_float32")
