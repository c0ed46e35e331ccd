"""Rabenseifner's all_reduce and the recursive-halving reduce-scatter it starts with.

Among a power of two p of ranks, a buffer is cut into p blocks. In reduce-scatter step k
every rank swaps half of the blocks it is still responsible for with rank ``r XOR p/2^k``
and reduces the half it keeps, so after log2(p) steps rank r holds block r fully reduced.
The all_reduce then runs those steps backwards as a recursive-doubling all-gather. Each
rank sends 2(p-1)/p of the buffer, as in the ring, in 2 log2(p) steps instead of 2(p-1):
the ring's bandwidth with far fewer message latencies (mid sizes across hosts), where
recursive doubling sends the whole buffer log2(p) times.

Worlds that are not a power of two fold the extra ranks in first (each hands its buffer to
rank ``r - p``) and hand them the result last, as recursive doubling does; the
reduce-scatter runs only on a power of two of ranks (the choice takes the ring elsewhere).
Every block is reduced at one rank and copied to the rest, so every rank ends with the same
bits.
"""

from __future__ import annotations

import numpy as np

from ringcomm import native
from ringcomm.algorithms.context import OpContext
from ringcomm.algorithms.schedule import (
    chunk_bounds,
    recursive_doubling_plan,
    recursive_halving_steps,
)


def _span(blocks: list[tuple[int, int]], run: tuple[int, int]) -> tuple[int, int]:
    """The elements ``[start, stop)`` of the blocks ``run`` (``[first, last + 1)``)."""
    return blocks[run[0]][0], blocks[run[1] - 1][1]


def allreduce(ctx: OpContext, buf: np.ndarray) -> None:
    """In-place Rabenseifner all_reduce: recursive-halving reduce-scatter, then
    recursive-doubling all-gather; no O(buffer) scratch."""
    n = ctx.size
    if n == 1:
        ctx.finish_average(buf)
        return
    plan = recursive_doubling_plan(ctx.rank, n)
    whole = ctx.segments(0, buf.size, buf.itemsize)
    p = 1 << (n.bit_length() - 1)
    steps = recursive_halving_steps(ctx.rank, p) if not plan.is_extra else ()
    last = 2 * (p.bit_length() - 1) + 1  # after the fold (step 0) and 2 log2(p) steps
    if plan.is_extra:
        for k, (a, b) in enumerate(whole):
            ctx.send(plan.fold_partner, 0, k, buf[a:b])
        for k, (a, b) in enumerate(whole):
            ctx.recv_into(plan.fold_partner, last, k, buf[a:b])
        ctx.flush()
        return
    if plan.fold_partner is not None:
        for k, (a, b) in enumerate(whole):
            ctx.recv_reduce(plan.fold_partner, 0, k, buf[a:b])
    blocks = chunk_bounds(buf.size, p)
    # Blocks sent in a reduce-scatter step are received into again only in the matching
    # all-gather step, after the partner has read them, so the sends need no copy.
    for s, step in enumerate(steps, start=1):
        for k, (a, b) in enumerate(ctx.segments(*_span(blocks, step.send), buf.itemsize)):
            ctx.send(step.partner, s, k, buf[a:b])
        for k, (a, b) in enumerate(ctx.segments(*_span(blocks, step.keep), buf.itemsize)):
            ctx.recv_reduce(step.partner, s, k, buf[a:b])
    a, b = blocks[ctx.rank]
    ctx.finish_average(buf[a:b])
    for s, step in enumerate(reversed(steps), start=len(steps) + 1):
        for k, (a, b) in enumerate(ctx.segments(*_span(blocks, step.keep), buf.itemsize)):
            ctx.send(step.partner, s, k, buf[a:b])
        for k, (a, b) in enumerate(ctx.segments(*_span(blocks, step.send), buf.itemsize)):
            ctx.recv_into(step.partner, s, k, buf[a:b])
    if plan.fold_partner is not None:
        for k, (a, b) in enumerate(whole):
            ctx.send(plan.fold_partner, last, k, buf[a:b])
    ctx.flush()


def reduce_scatter(ctx: OpContext, output: np.ndarray, input: np.ndarray) -> None:
    """Recursive-halving reduce-scatter among a power of two of ranks: ``output`` gets
    chunk ``rank`` of the reduction of ``input`` (``size`` equal chunks). ``input`` is read
    only (unless ``output`` is its slot ``rank``); partial sums form in a scratch of half
    of it, the last step's straight in ``output``."""
    n, c = ctx.size, output.size
    steps = recursive_halving_steps(ctx.rank, n)  # (refuses a world that is not a power of 2)
    source, base = input, 0  # what holds this rank's partial sums, and its first element
    for s, step in enumerate(steps, start=1):
        a, b = step.send[0] * c, step.send[1] * c
        for k, (x, y) in enumerate(ctx.segments(a, b, input.itemsize)):
            ctx.send(step.partner, s, k, source[x - base : y - base])
        ka, kb = step.keep[0] * c, step.keep[1] * c
        kept = source[ka - base : kb - base]
        if s == len(steps):
            acc = output
        elif source is input:
            acc = np.empty(kb - ka, input.dtype)
        else:
            acc = kept  # the scratch: reduce in place
        if acc is not kept and native.byte_offset(kept, acc):  # (0: the same memory)
            np.copyto(acc, kept)
        for k, (x, y) in enumerate(ctx.segments(ka, kb, input.itemsize)):
            ctx.recv_reduce(step.partner, s, k, acc[x - ka : y - ka])
        source, base = acc, ka
    if n == 1:
        np.copyto(output, input)
    ctx.finish_average(output)
    ctx.flush()


__all__ = ["allreduce", "reduce_scatter"]
