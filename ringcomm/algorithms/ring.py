"""Ring collectives, pipelined by segment.

Ranks form a ring; each sends to its right neighbour and receives from its left::

    rank 0 -> rank 1 -> rank 2 -> ... -> rank n-1 -> rank 0

A buffer is cut into n chunks (one per rank) and each chunk into segments. At every step a
rank forwards the segment it just received (and reduced) while ZeroMQ's I/O thread moves
the next one and the GIL-free kernel reduces it, so transfer and reduction overlap. Each
rank sends and receives 2(n-1)/n of the buffer for an allreduce and (n-1)/n for an
allgather or reduce-scatter: bandwidth-optimal whatever n is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ringcomm import native
from ringcomm.algorithms.context import OpContext
from ringcomm.algorithms.schedule import (
    RingStep,
    chunk_bounds,
    ring_allgather_steps,
    ring_allreduce_steps,
    ring_reduce_scatter_steps,
)

# land(step index, ring step, segment index, start, stop) -> (data to forward, copy it?)
Land = Callable[[int, RingStep, int, int, int], tuple[np.ndarray, bool]]


def _run_ring(
    ctx: OpContext,
    steps: list[RingStep],
    chunks: list[tuple[int, int]],
    first_send: np.ndarray,
    land: Land,
    itemsize: int,
) -> None:
    right = (ctx.rank + 1) % ctx.size
    segs = [ctx.segments(a, b, itemsize) for a, b in chunks]
    # Initiate the first step: this rank's own chunk goes right.
    for k, (a, b) in enumerate(segs[steps[0].send]):
        ctx.send(right, 0, k, first_send[a:b])
    for s, step in enumerate(steps):
        last = s == len(steps) - 1
        for k, (a, b) in enumerate(segs[step.recv]):
            # Wait for the left neighbour's segment, reduce or copy it ...
            data, copy = land(s, step, k, a, b)
            # ... and pass it on right as the next step's segment.
            if not last:
                ctx.send(right, s + 1, k, data, copy=copy)
    ctx.flush()


def allreduce(ctx: OpContext, buf: np.ndarray) -> None:
    """In-place ring allreduce: reduce-scatter then allgather; no O(buffer) scratch."""
    n = ctx.size
    if n == 1:
        ctx.finish_average(buf)
        return
    left = (ctx.rank - 1) % n

    def land(s: int, step: RingStep, k: int, a: int, b: int) -> tuple[np.ndarray, bool]:
        seg = buf[a:b]
        if step.reduce:
            ctx.recv_reduce(left, s, k, seg)
            if s == n - 2:  # this chunk is now fully reduced here
                ctx.finish_average(seg)
        else:
            ctx.recv_into(left, s, k, seg)
        return seg, False

    _run_ring(
        ctx, ring_allreduce_steps(ctx.rank, n), chunk_bounds(buf.size, n), buf, land, buf.itemsize
    )


def reduce_scatter(
    ctx: OpContext,
    output: np.ndarray,
    input: np.ndarray,
    chunks: list[tuple[int, int]] | None = None,
) -> None:
    """Ring reduce-scatter: ``output`` gets chunk ``rank`` of the reduction of ``input``.

    ``chunks``: rank c's chunk of ``input`` is ``input[a:b]`` for ``(a, b) = chunks[c]``
    (default: ``size`` equal chunks); chunks may differ in size, or be empty.
    ``input`` is read only; a partial sum is formed in a one-segment scratch and copied on
    the wire, so the scratch can be reused at once.
    """
    n = ctx.size
    if chunks is None:
        chunks = [(c * output.size, (c + 1) * output.size) for c in range(n)]
    if n == 1:
        np.copyto(output, input)
        ctx.finish_average(output)
        return
    left = (ctx.rank - 1) % n
    biggest = max(b - a for a, b in chunks)
    scratch = np.empty(min(biggest, max(1, ctx.segment_bytes // input.itemsize)), input.dtype)

    def land(s: int, step: RingStep, k: int, a: int, b: int) -> tuple[np.ndarray, bool]:
        last = s == n - 2  # the last step lands in the output
        base = chunks[step.recv][0]
        acc = output[a - base : b - base] if last else scratch[: b - a]
        np.copyto(acc, input[a:b])
        ctx.recv_reduce(left, s, k, acc)
        if last:
            ctx.finish_average(acc)
        return acc, True

    _run_ring(ctx, ring_reduce_scatter_steps(ctx.rank, n), chunks, input, land, input.itemsize)


def allgather(
    ctx: OpContext,
    output: np.ndarray,
    input: np.ndarray,
    chunks: list[tuple[int, int]] | None = None,
) -> None:
    """Ring allgather: rank r's ``input`` lands in ``output[a:b]``, ``(a, b) = chunks[r]``
    (default: slot r of ``size`` equal slots); chunks may differ in size, or be empty."""
    n, r = ctx.size, ctx.rank
    if chunks is None:
        chunks = [(c * input.size, (c + 1) * input.size) for c in range(n)]
    mine = output[chunks[r][0] : chunks[r][1]]
    if native.byte_offset(input, mine):  # (0: in place, input is this slot)
        np.copyto(mine, input)
    if n == 1:
        return
    left = (r - 1) % n

    def land(s: int, step: RingStep, k: int, a: int, b: int) -> tuple[np.ndarray, bool]:
        seg = output[a:b]
        ctx.recv_into(left, s, k, seg)
        return seg, False

    _run_ring(ctx, ring_allgather_steps(r, n), chunks, output, land, output.itemsize)


__all__ = ["allgather", "allreduce", "reduce_scatter"]
