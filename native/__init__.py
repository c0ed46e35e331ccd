"""ringcomm.native: the one home of hot loops (Numba CPU kernels, NumPy fallback), of
the shared-memory transport's atomic counters (``shm``) and of the board's native calls
(``board``).

Installed as the subpackage ``ringcomm.native`` (setuptools ``package-dir``).
"""

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


def warm_cache() -> None:
    """Compile (or load from numba's on-disk cache) every kernel for every dtype, and the
    shared-memory counters. Running this once before a many-process launch spares each
    rank its own compile."""
    kernels.warm_cache()
    shm.warm_cache()
    board.warm_cache()
