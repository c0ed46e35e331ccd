"""Star ("parameter server") allreduce: every rank sends its buffer to a server rank, which
reduces them in rank order and sends the result back.

The server moves 2(n-1) buffers through its one link while the ring moves 2(n-1)/n per
rank, so the star falls behind as the world grows; it is here so users and the benchmark
can see that.
"""

from __future__ import annotations

import numpy as np

from ringcomm.algorithms.context import OpContext

SERVER = 0


def allreduce(ctx: OpContext, buf: np.ndarray) -> None:
    """In-place star allreduce with rank 0 as the server."""
    segs = ctx.segments(0, buf.size, buf.itemsize)
    if ctx.rank != SERVER:
        for k, (a, b) in enumerate(segs):
            ctx.send(SERVER, 0, k, buf[a:b])
        ctx.flush()
        for k, (a, b) in enumerate(segs):
            ctx.recv_into(SERVER, 1, k, buf[a:b])
        return
    for k, (a, b) in enumerate(segs):
        # Wait for every worker's segment k, reduce each into ours, send the result back.
        for src in range(1, ctx.size):
            ctx.recv_reduce(src, 0, k, buf[a:b])
        ctx.finish_average(buf[a:b])
        for dst in range(1, ctx.size):
            ctx.send(dst, 1, k, buf[a:b])
    ctx.flush()
