"""ringcomm.native: the one home of hot loops (Numba CPU kernels, NumPy fallback), of
the shared-memory transport's atomic counters (``shm``) and of the board's native calls
(``board``).

Installed as the subpackage ``ringcomm.native`` (setuptools ``package-dir``).
"""

import os
import subprocess
import sys

from . import board, kernels, shm
from .kernels import byte_offset, divide, reduce_into
from .numpy_fallback import bf16_to_f32, f32_to_bf16
from .ops import AVG, BAND, BOR, BUFFER_DTYPES, BXOR, MAX, MIN, PROD, SUM

__all__ = [
    "AVG",
    "BAND",
    "BOR",
    "BUFFER_DTYPES",
    "BXOR",
    "MAX",
    "MIN",
    "PROD",
    "SUM",
    "bf16_to_f32",
    "byte_offset",
    "divide",
    "f32_to_bf16",
    "reduce_into",
    "warm_cache",
]


def warm_cache(processes: int | None = None) -> None:
    """Compile (or load from numba's on-disk cache) every kernel for every dtype, the
    shared-memory counters and the board's calls. Running this once before a many-process
    launch spares each rank its own compile.

    ``processes`` (default: 2 where there are two cores or more) share the board's calls,
    which take most of the compile (about 2 minutes on one core); numba's cache takes
    their saves one at a time (``cache.py``)."""
    if kernels._NUMBA_OFF:
        return
    parts = processes or min(2, os.cpu_count() or 1)
    code = f"import {__name__} as native; native.board.warm_cache({{}}, {parts})"
    helpers = [
        subprocess.Popen([sys.executable, "-c", code.format(part)]) for part in range(1, parts)
    ]
    try:
        kernels.warm_cache()
        shm.warm_cache()
        board.warm_cache(0, parts)
    finally:
        failed = [p.args[-1] for p in helpers if p.wait() != 0]
    if failed:
        raise RuntimeError(f"warm_cache: a helper process failed: {failed}")
