"""ringcomm.native: the one home of hot loops (Numba CPU kernels, NumPy fallback).

Installed as the subpackage ``ringcomm.native`` (setuptools ``package-dir``).
"""

from .kernels import divide, reduce_into, warm_cache
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
    "divide",
    "f32_to_bf16",
    "reduce_into",
    "warm_cache",
]
