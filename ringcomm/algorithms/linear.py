"""Collectives where every rank talks to every other directly: gather, scatter, all-to-all,
and the dissemination barrier."""

from __future__ import annotations

import time

import numpy as np

from ringcomm.algorithms.context import OpContext
from ringcomm.algorithms.schedule import dissemination_partners
from ringcomm.errors import CommTimeoutError, TransportError
from ringcomm.transport.base import Tag


def send_all(
    ctx: OpContext, dst: int, step: int, data: np.ndarray, first: int = 0, copy: bool = False
) -> None:
    for k, (a, b) in enumerate(ctx.segments(0, data.size, data.itemsize), start=first):
        ctx.send(dst, step, k, data[a:b], copy=copy)


def recv_all(ctx: OpContext, src: int, step: int, out: np.ndarray, first: int = 0) -> None:
    for k, (a, b) in enumerate(ctx.segments(0, out.size, out.itemsize), start=first):
        ctx.recv_into(src, step, k, out[a:b])


Bounds = list[tuple[int, int]]


def _even(count: int, size: int) -> Bounds:
    return [(r * count, (r + 1) * count) for r in range(size)]


def gather(
    ctx: OpContext,
    output: np.ndarray | None,
    input: np.ndarray,
    root: int,
    bounds: Bounds | None = None,
) -> None:
    """Rank r's ``input`` lands in ``output[a:b]`` on ``root``, ``(a, b) = bounds[r]``
    (default: slot r of ``size`` equal slots)."""
    if ctx.rank != root:
        send_all(ctx, root, 0, input)
    else:
        assert output is not None
        bounds = bounds or _even(input.size, ctx.size)
        for src in range(ctx.size):
            a, b = bounds[src]
            if src == root:
                np.copyto(output[a:b], input)
            else:
                recv_all(ctx, src, 0, output[a:b])
    ctx.flush()


def scatter(
    ctx: OpContext,
    output: np.ndarray,
    input: np.ndarray | None,
    root: int,
    bounds: Bounds | None = None,
) -> None:
    """Rank r's ``output`` gets ``input[a:b]`` of ``root``, ``(a, b) = bounds[r]``
    (default: slot r of ``size`` equal slots)."""
    if ctx.rank != root:
        recv_all(ctx, root, 0, output)
        return
    assert input is not None
    bounds = bounds or _even(output.size, ctx.size)
    for dst in range(ctx.size):
        a, b = bounds[dst]
        if dst != root:
            send_all(ctx, dst, 0, input[a:b])
    a, b = bounds[root]
    np.copyto(output, input[a:b])
    ctx.flush()


def all_to_all(
    ctx: OpContext,
    output: np.ndarray,
    input: np.ndarray,
    send_bounds: Bounds | None = None,
    recv_bounds: Bounds | None = None,
) -> None:
    """Rank s's ``input[send_bounds[d]]`` lands in rank d's ``output[recv_bounds[s]]``
    (default: slot d to slot s of ``size`` equal slots); pairwise exchange: at step k rank
    r sends to r+k and receives from r-k. An empty piece still goes as an empty message, so
    counts that disagree between ranks fail as a size mismatch, not a hang."""
    n, r = ctx.size, ctx.rank
    send_bounds = send_bounds or _even(input.size // n, n)
    recv_bounds = recv_bounds or _even(output.size // n, n)
    (a, b), (c, d) = send_bounds[r], recv_bounds[r]  # equal sizes: checked at the call
    np.copyto(output[c:d], input[a:b])
    for k in range(1, n):
        dst, src = (r + k) % n, (r - k) % n
        a, b = send_bounds[dst]
        send_all(ctx, dst, k, input[a:b])
        a, b = recv_bounds[src]
        recv_all(ctx, src, k, output[a:b])
    ctx.flush()


def barrier(ctx: OpContext) -> None:
    """Dissemination barrier: ceil(log2 n) rounds of empty messages."""
    empty = np.empty(0, np.uint8)
    for step, (to, frm) in enumerate(dissemination_partners(ctx.rank, ctx.size)):
        ctx.send(to, step, 0, empty)
        ctx.recv(frm, step, 0, empty)


# After the deadline passed waiting for one rank, the others' arrivals are still looked for
# this long (they may be in flight, not yet filed).
_LATE_LOOK_SECONDS = 0.01


def monitored_barrier(ctx: OpContext, wait_all_ranks: bool) -> None:
    """A barrier through rank 0 that names who did not arrive: every rank reports to rank
    0, which releases them all once everyone has. Past the deadline rank 0 raises naming
    the first missing rank (or all of them, with ``wait_all_ranks``); a rank whose release
    does not come raises naming rank 0."""
    empty = np.empty(0, np.uint8)
    if ctx.rank != 0:
        ctx.send(0, 0, 0, empty)
        try:
            ctx.recv(0, 1, 0, empty)
        except CommTimeoutError:
            raise CommTimeoutError(
                f"Rank {ctx.rank} successfully reached monitoredBarrier, but received errors "
                "while waiting for send/recv from rank 0 (it timed out)"
            ) from None
        return
    missing = []
    for src in range(1, ctx.size):
        try:
            deadline = ctx.deadline if not missing else time.monotonic() + _LATE_LOOK_SECONDS
            ctx.transport.recv(src, _barrier_tag(ctx, 0), 0, deadline)
        except CommTimeoutError:
            missing.append(src)
            if not wait_all_ranks:
                break
    if len(missing) == 1:
        raise CommTimeoutError(f"Rank {missing[0]} failed to pass monitoredBarrier in time")
    if missing:
        ranks = ", ".join(map(str, missing))
        raise CommTimeoutError(f"Ranks {ranks} failed to pass monitoredBarrier in time")
    for dst in range(1, ctx.size):
        ctx.send(dst, 1, 0, empty)


def _barrier_tag(ctx: OpContext, step: int) -> Tag:
    return Tag(ctx.kind, ctx.seq, step, 0)


def send(ctx: OpContext, dst: int, data: np.ndarray, tag: int) -> None:
    """Point-to-point send (``ctx`` carries the p2p kind and per-pair sequence): a segment
    with the byte count, then the data from segment 1 on.

    It completes once the data has left the caller's memory, never waiting for the receiver:
    where a transport's sends would wait for it (MPI), the data is copied first, or a send
    queued ahead of its own matching receive (a send to oneself, two ranks that both send
    first) would block the communicator for good.
    """
    ctx.send(dst, tag, 0, np.array([data.nbytes], np.uint64), copy=True)
    send_all(ctx, dst, tag, data, first=1, copy=ctx.transport.sends_wait_for_receiver)
    ctx.flush()


def recv(ctx: OpContext, src: int, out: np.ndarray, tag: int) -> None:
    """Point-to-point receive into ``out``; a message of another size is refused whole
    (per-segment checks alone would take a longer message's first segments)."""
    header = np.empty(1, np.uint64)
    ctx.recv_into(src, tag, 0, header)
    if int(header[0]) != out.nbytes:
        raise TransportError(
            f"{ctx.transport.current_op}: rank {ctx.rank} receives {out.nbytes} bytes with "
            f"tag {tag} but rank {src} sent {int(header[0])}; sizes must match"
        )
    recv_all(ctx, src, tag, out, first=1)


def recv_any(ctx: OpContext, out: np.ndarray, tag: int) -> int:
    """Point-to-point receive from whichever rank's message with ``tag`` comes first (the
    transport probes for it); returns that rank."""
    ctx.transport.waiting_for = None
    src = ctx.transport.probe_p2p(tag, ctx.deadline)
    recv(ctx, src, out, tag)
    return src
