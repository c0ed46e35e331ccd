"""Pure schedules: who owns which chunk, how chunks are cut into segments, who talks to whom
at each step. No I/O here, so every schedule is tested on its own.

Vocabulary: a buffer of ``count`` elements is cut into one **chunk** per rank; a chunk is
cut into **segments**, the unit on the wire; a **step** is one send/recv round.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple


def chunk_bounds(count: int, parts: int) -> list[tuple[int, int]]:
    """Cut ``count`` elements into ``parts`` contiguous chunks whose sizes differ by at most
    one (the first ``count % parts`` chunks get the extra element)."""
    base, extra = divmod(count, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def count_bounds(counts: Sequence[int]) -> list[tuple[int, int]]:
    """The ``[start, stop)`` of each of consecutive pieces of ``counts`` elements."""
    bounds, start = [], 0
    for c in counts:
        bounds.append((start, start + c))
        start += c
    return bounds


def segment_bounds(start: int, stop: int, segment_elems: int) -> list[tuple[int, int]]:
    """Cut ``[start, stop)`` into segments of at most ``segment_elems`` elements.

    An empty range still gives one (empty) segment: every step exchanges at least one
    message, so ranks stay in lockstep whatever the count.
    """
    if stop <= start:
        return [(start, start)]
    return [(a, min(a + segment_elems, stop)) for a in range(start, stop, segment_elems)]


class RingStep(NamedTuple):
    """One step of a ring: send chunk ``send`` to the right, receive chunk ``recv`` from the
    left and reduce it (``reduce``) or copy it (not ``reduce``)."""

    send: int
    recv: int
    reduce: bool


def ring_allreduce_steps(rank: int, size: int) -> list[RingStep]:
    """Reduce-scatter then allgather, 2(n-1) steps. Rank r ends the reduce-scatter owning
    chunk (r+1) mod n fully reduced, then passes finished chunks around the ring::

        reduce-scatter step s: send chunk r-s,   recv chunk r-s-1 and reduce
        allgather      step t: send chunk r+1-t, recv chunk r-t   and copy

    Each step's send is the chunk received in the step before, so a segment can be forwarded
    the moment it is ready. Each rank sends 2(n-1)/n of the buffer in all.
    """
    n = size
    rs = [RingStep((rank - s) % n, (rank - s - 1) % n, True) for s in range(n - 1)]
    ag = [RingStep((rank + 1 - t) % n, (rank - t) % n, False) for t in range(n - 1)]
    return rs + ag


def ring_reduce_scatter_steps(rank: int, size: int) -> list[RingStep]:
    """n-1 reducing steps that leave chunk ``rank`` fully reduced at rank ``rank``."""
    n = size
    return [RingStep((rank - s - 1) % n, (rank - s - 2) % n, True) for s in range(n - 1)]


def ring_allgather_steps(rank: int, size: int) -> list[RingStep]:
    """n-1 copying steps starting with this rank's own chunk."""
    n = size
    return [RingStep((rank - s) % n, (rank - s - 1) % n, False) for s in range(n - 1)]


class DoublingPlan(NamedTuple):
    """Recursive doubling on the largest power of two ``p`` <= n. Ranks ``p..n-1`` ("extra")
    first hand their data to rank ``r - p`` and get the result back at the end."""

    fold_partner: int | None  # extra rank's partner, or core rank's extra partner
    is_extra: bool
    partners: list[int]  # core ranks: exchange partner at each doubling stage


@functools.lru_cache(maxsize=256)  # the same few (rank, size) on every small all_reduce
def recursive_doubling_plan(rank: int, size: int) -> DoublingPlan:
    """The partners of ``rank`` in recursive doubling among ``size`` ranks."""
    p = 1 << (size.bit_length() - 1)
    if rank >= p:
        return DoublingPlan(rank - p, True, [])
    fold = rank + p if rank + p < size else None
    partners, mask = [], 1
    while mask < p:
        partners.append(rank ^ mask)
        mask <<= 1
    return DoublingPlan(fold, False, partners)


class HalvingStep(NamedTuple):
    """One step of recursive halving among a power of two of ranks, in blocks (one block per
    rank): exchange with ``partner``, sending it blocks ``send`` (the half the partner
    keeps) and keeping blocks ``keep``, reduced with the partner's copy of them."""

    partner: int
    send: tuple[int, int]
    keep: tuple[int, int]


@functools.lru_cache(maxsize=256)
def recursive_halving_steps(rank: int, size: int) -> tuple[HalvingStep, ...]:
    """The log2(size) steps of a recursive-halving reduce-scatter (``size`` a power of two):
    the partner is the farthest first (``rank XOR size/2``), each step halves the blocks this
    rank is responsible for, and rank r ends with block r. Run backwards, sending ``keep``
    and receiving ``send``, they are the recursive-doubling all-gather that follows it in
    Rabenseifner's all_reduce."""
    if size & (size - 1):
        raise ValueError(f"recursive halving needs a power of two of ranks, not {size}")
    steps, lo, hi, mask = [], 0, size, size >> 1
    while mask:
        mid = (lo + hi) // 2
        if rank & mask:
            steps.append(HalvingStep(rank ^ mask, (lo, mid), (mid, hi)))
            lo = mid
        else:
            steps.append(HalvingStep(rank ^ mask, (mid, hi), (lo, mid)))
            hi = mid
        mask >>= 1
    return tuple(steps)


class BruckStep(NamedTuple):
    """One step of a Bruck all-gather: send ``count`` blocks starting at block ``first`` to
    ``dst``, receive ``count`` blocks starting at block ``into`` from ``src`` (block indices
    modulo the world size: a run may wrap past the last block)."""

    dst: int
    src: int
    first: int
    into: int
    count: int


def bruck_steps(rank: int, size: int) -> list[BruckStep]:
    """ceil(log2 n) steps for any n: before the step at distance k, rank r holds blocks
    r..r+k-1 (modulo n); it sends the first min(k, n-k) of them to rank r-k and receives
    as many from rank r+k, which holds r+k.... Blocks land where they belong, so no
    rotation is needed at the end."""
    steps, k = [], 1
    while k < size:
        steps.append(
            BruckStep(
                (rank - k) % size, (rank + k) % size, rank, (rank + k) % size, min(k, size - k)
            )
        )
        k <<= 1
    return steps


def block_runs(first: int, count: int, blocks: int) -> list[tuple[int, int]]:
    """The contiguous ``[start, stop)`` block ranges of ``count`` blocks from ``first``,
    modulo ``blocks``: one range, or two where the run wraps past the last block."""
    stop = first + count
    if stop <= blocks:
        return [(first, stop)]
    return [(first, blocks), (0, stop - blocks)]


class TreeNode(NamedTuple):
    """A rank's place in a broadcast/reduce tree, in real ranks."""

    parent: int | None
    children: list[int]


def binomial_tree(rank: int, size: int, root: int) -> TreeNode:
    """Binomial tree rooted at ``root``: log2(n) rounds. Children are listed biggest subtree
    first, which is the order a broadcast should feed them."""
    vr = (rank - root) % size
    high = 1 << (vr.bit_length() - 1) if vr else 0
    parent = (vr - high + root) % size if vr else None
    children, m = [], 1
    while m < size:
        if m > high and vr + m < size:
            children.append((vr + m + root) % size)
        m <<= 1
    return TreeNode(parent, children[::-1])


def chain(rank: int, size: int, root: int) -> TreeNode:
    """A chain from ``root``: each rank forwards to the next; pipelined, it moves a large
    message at link speed whatever n is."""
    vr = (rank - root) % size
    parent = (rank - 1) % size if vr else None
    children = [(rank + 1) % size] if vr + 1 < size else []
    return TreeNode(parent, children)


def dissemination_partners(rank: int, size: int) -> list[tuple[int, int]]:
    """Barrier rounds: in round k send to rank+2^k and receive from rank-2^k (ceil log2 n)."""
    rounds, k = [], 1
    while k < size:
        rounds.append(((rank + k) % size, (rank - k) % size))
        k <<= 1
    return rounds
