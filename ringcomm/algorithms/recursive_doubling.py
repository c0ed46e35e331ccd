"""Recursive doubling allreduce: latency-optimal for small messages.

In stage k every rank swaps its whole buffer with rank ``r XOR 2^k`` and reduces, so after
log2(n) stages (one message latency each, instead of the ring's 2(n-1)) every rank holds
the result. Worlds that are not a power of two fold the extra ranks in first and hand them
the result last. Partners reduce the same pair of operands, so every rank ends with the
same bits.
"""

from __future__ import annotations

import numpy as np

from ringcomm.algorithms.context import OpContext
from ringcomm.algorithms.schedule import recursive_doubling_plan


def _exchange_reduce(
    ctx: OpContext, peer: int, step: int, buf: np.ndarray, segs: list[tuple[int, int]]
) -> None:
    # Sends are copies (small messages: the copy is cheap), so the buffer may change at
    # once and the peer's segment reduces straight into it; no send is waited for, so two
    # partners whose sends complete only once received (MPI) cannot block each other.
    for k, (a, b) in enumerate(segs):
        ctx.send(peer, step, k, buf[a:b], copy=True)
    for k, (a, b) in enumerate(segs):
        ctx.recv_reduce(peer, step, k, buf[a:b])


def allreduce(ctx: OpContext, buf: np.ndarray) -> None:
    """In-place recursive doubling allreduce."""
    plan = recursive_doubling_plan(ctx.rank, ctx.size)
    segs = ctx.segments(0, buf.size, buf.itemsize)
    last = ctx.size.bit_length()  # after the fold (step 0) and the log2(p) stages
    if plan.is_extra:
        for k, (a, b) in enumerate(segs):
            ctx.send(plan.fold_partner, 0, k, buf[a:b])
        for k, (a, b) in enumerate(segs):
            ctx.recv_into(plan.fold_partner, last, k, buf[a:b])
        return
    if plan.fold_partner is not None:
        for k, (a, b) in enumerate(segs):
            ctx.recv_reduce(plan.fold_partner, 0, k, buf[a:b])
    for stage, peer in enumerate(plan.partners, start=1):
        _exchange_reduce(ctx, peer, stage, buf, segs)
    ctx.finish_average(buf)
    if plan.fold_partner is not None:
        for k, (a, b) in enumerate(segs):
            ctx.send(plan.fold_partner, last, k, buf[a:b])
    ctx.flush()
