"""all_reduce with the data exchanged as 16-bit floats (``compression=`` of all_reduce).

Each rank's float32 contribution (times ``factor``: 1/size for AVG) is rounded once to
float16 or bfloat16, and every rank widens the same 16-bit result back into its buffer, so
all ranks end with identical values; half the bytes move. On the shared-memory board
(:func:`ringcomm.algorithms.direct.allreduce_compressed`) the conversions are fused into
the board's own copies and the sum is formed in float32, rounded once. Elsewhere
:func:`through_half` rounds into a 16-bit copy, all_reduces that with the algorithm chosen
for its size (which rounds after every addition, as torch's fp16/bf16 DDP hooks do; with
one or two ranks that is once) and widens it back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ringcomm import native
from ringcomm.algorithms.context import OpContext

COMPRESSIONS = ("float16", "bfloat16")


def through_half(
    ctx: OpContext,
    data: np.ndarray,
    bfloat16: bool,
    factor: float,
    exchange: Callable[[OpContext, np.ndarray], None],
) -> None:
    """Round ``data * factor`` into a 16-bit copy, sum that over the ranks with
    ``exchange`` (an all_reduce algorithm), and widen the result back into ``data``."""
    half = np.empty(data.size, np.uint16)
    native.kernels.narrow(data, half, bfloat16, factor)
    part = ctx.part(ctx.seq, ctx.kind, native.SUM, bfloat16)
    exchange(part, half if bfloat16 else half.view(np.float16))
    native.kernels.widen(half, data, bfloat16)
