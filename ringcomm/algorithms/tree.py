"""Rooted collectives on trees: broadcast (binomial tree or chain) and reduce (binomial).

Both run segment by segment, so a rank forwards segment k while segment k+1 is in flight.
The binomial tree needs log2(n) rounds (small messages); the chain moves a large message at
link speed whatever n is, once the pipeline is full.
"""

from __future__ import annotations

import numpy as np

from ringcomm.algorithms.context import OpContext
from ringcomm.algorithms.schedule import TreeNode, binomial_tree, chain


def _broadcast(ctx: OpContext, buf: np.ndarray, node: TreeNode) -> None:
    for k, (a, b) in enumerate(ctx.segments(0, buf.size, buf.itemsize)):
        seg = buf[a:b]
        if node.parent is not None:
            ctx.recv_into(node.parent, 0, k, seg)
        for child in node.children:
            ctx.send(child, 0, k, seg, one_way=True)
    ctx.flush()


def broadcast_binomial(ctx: OpContext, buf: np.ndarray, root: int) -> None:
    """Broadcast ``buf`` from ``root`` down a binomial tree."""
    _broadcast(ctx, buf, binomial_tree(ctx.rank, ctx.size, root))


def broadcast_chain(ctx: OpContext, buf: np.ndarray, root: int) -> None:
    """Broadcast ``buf`` from ``root`` along a pipelined chain."""
    _broadcast(ctx, buf, chain(ctx.rank, ctx.size, root))


def reduce_binomial(ctx: OpContext, buf: np.ndarray, root: int) -> None:
    """Reduce into ``buf`` on ``root`` up a binomial tree; other ranks' buffers are unchanged.

    Inner ranks accumulate in a one-segment scratch that is copied on the wire.
    """
    node = binomial_tree(ctx.rank, ctx.size, root)
    is_root = node.parent is None
    scratch = None
    if node.children and not is_root:
        scratch = np.empty(min(buf.size, max(1, ctx.segment_bytes // buf.itemsize)), buf.dtype)
    for k, (a, b) in enumerate(ctx.segments(0, buf.size, buf.itemsize)):
        if scratch is None:
            acc = buf[a:b]
        else:
            acc = scratch[: b - a]
            np.copyto(acc, buf[a:b])
        # Children send their partial results; fold them in, smallest subtree first.
        for child in reversed(node.children):
            ctx.recv_reduce(child, 0, k, acc)
        if is_root:
            ctx.finish_average(acc)
        else:
            ctx.send(node.parent, 0, k, acc, copy=scratch is not None)
    ctx.flush()
