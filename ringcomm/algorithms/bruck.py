"""Bruck's all_gather: ceil(log2 n) steps for any n, where the ring takes n-1.

At the step of distance k (1, 2, 4, ...) rank r sends the blocks it holds, r..r+k-1 (modulo
n), to rank r-k and receives blocks r+k... from rank r+k: the number of blocks held doubles
each step. Each rank sends (n-1)/n of the output, as in the ring, in far fewer message
latencies (mid sizes across hosts). Blocks land in their rank's slot directly (a run that
wraps past the last slot goes as two pieces), so unlike the textbook version no rotation is
needed at the end.
"""

from __future__ import annotations

import numpy as np

from ringcomm import native
from ringcomm.algorithms.context import OpContext
from ringcomm.algorithms.schedule import block_runs, bruck_steps


def _segments(
    ctx: OpContext, first: int, count: int, chunk: int, itemsize: int
) -> list[tuple[int, int]]:
    """The segments of ``count`` chunks of ``chunk`` elements from chunk ``first``, wrapping."""
    return [
        seg
        for lo, hi in block_runs(first, count, ctx.size)
        for seg in ctx.segments(lo * chunk, hi * chunk, itemsize)
    ]


def allgather(ctx: OpContext, output: np.ndarray, input: np.ndarray) -> None:
    """Bruck all_gather: rank r's ``input`` lands in slot r of ``output`` (``size`` equal
    slots) on every rank."""
    n, r, c = ctx.size, ctx.rank, input.size
    mine = output[r * c : (r + 1) * c]
    if native.byte_offset(input, mine):  # (0: in place, input is this slot)
        np.copyto(mine, input)
    # What a step sends was received in an earlier one and is never written again.
    for s, step in enumerate(bruck_steps(r, n)):
        for k, (a, b) in enumerate(_segments(ctx, step.first, step.count, c, output.itemsize)):
            ctx.send(step.dst, s, k, output[a:b])
        for k, (a, b) in enumerate(_segments(ctx, step.into, step.count, c, output.itemsize)):
            ctx.recv_into(step.src, s, k, output[a:b])
    ctx.flush()


__all__ = ["allgather"]
