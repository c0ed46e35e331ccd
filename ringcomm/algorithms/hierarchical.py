"""Hierarchical all_reduce for communicators that span hosts, as NCCL and Horovod do it:

1. reduce-scatter inside each host (shared memory): local rank i holds slice i of the host's
   sum;
2. all_reduce of slice i with local rank i of every other host: ``local_size`` concurrent
   inter-host all_reduces, each of 1/local_size of the buffer, so every rank's link carries
   a share instead of one ring carrying everything;
3. all-gather inside each host.

Each host's link carries 2(h-1)/h of the buffer in all (h hosts) against 2(n-1)/n through a
single stream for a flat ring in host order, and against that on *every* hop when ranks are
placed round-robin. Needs the same number of ranks on every host (the choice falls back to
the flat algorithms in host order otherwise). The few elements past a multiple of
``local_size`` go through a local all_reduce and a cross all_reduce.

Integer and bitwise results equal the flat algorithms' bit for bit; floating-point sums
differ from them in summation order only.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import numpy as np

from ringcomm import native
from ringcomm.errors import RingcommError
from ringcomm.types import ReduceOp

if TYPE_CHECKING:
    from ringcomm.communicator import Communicator


_RANKS = re.compile(r"\b(ranks?(?:\(s\))?) (\[[\d, ]*\]|\d+)")


def in_world_ranks(message: str, world: tuple[int, ...]) -> str:
    """``message`` of a sub-communicator with its "rank 1", "ranks [0, 2]" and "rank(s) [1]"
    renumbered as ranks of the whole communicator (``world[i]`` is its rank i)."""

    def renumber(m: re.Match[str]) -> str:
        numbers = [int(x) for x in re.findall(r"\d+", m.group(2))]
        if any(x >= len(world) for x in numbers):
            return m.group(0)
        mapped = [world[x] for x in numbers]
        text = str(mapped) if m.group(2).startswith("[") else str(mapped[0])
        return f"{m.group(1)} {text}"

    return _RANKS.sub(renumber, message)


def allreduce(
    local: Communicator,
    cross: Communicator,
    buf: np.ndarray,
    op: ReduceOp,
    world_size: int,
    deadline: float,
    members: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    """All-reduce ``buf`` in place over ``local`` (this host's ranks) then ``cross`` (this
    local rank on every host), within ``deadline`` (``time.monotonic()``).

    ``members``: the world ranks of ``local`` and of ``cross``, by their rank there, to name
    world ranks in errors.
    """
    inner = ReduceOp.SUM if op == ReduceOp.AVG else op  # AVG divides once, at the end
    n_local = local.size
    body = buf.size - buf.size % n_local
    slot = body // n_local
    phases = []
    if slot:
        mine = buf[local.rank * slot : (local.rank + 1) * slot]
        phases += [
            ("reduce-scatter inside the host", local, lambda t: local.reduce_scatter(
                mine, buf[:body], inner, timeout=t)),
            ("all_reduce across hosts", cross, lambda t: cross.all_reduce(
                mine, inner, timeout=t)),
            ("all-gather inside the host", local, lambda t: local.all_gather(
                buf[:body], mine, timeout=t)),
        ]  # fmt: skip
    if body < buf.size:
        tail = buf[body:]
        phases += [
            ("all_reduce of the tail inside the host", local, lambda t: local.all_reduce(
                tail, inner, timeout=t)),
            ("all_reduce of the tail across hosts", cross, lambda t: cross.all_reduce(
                tail, inner, timeout=t)),
        ]  # fmt: skip
    for what, comm, run in phases:
        try:
            run(max(0.0, deadline - time.monotonic()))
        except RingcommError as e:
            # The two sub-communicators are unusable now; peers that wait on them for this
            # rank must hear of it at once, not at their timeout.
            for sub in (local, cross):
                sub.abort(f"hierarchical all_reduce failed: {what}")
            world = members[0] if comm is local else members[1]
            raise type(e)(
                f"hierarchical all_reduce, {what}: {in_world_ranks(str(e), world)} (ranks "
                "as numbered in the whole communicator)"
            ) from e
    if op == ReduceOp.AVG:
        native.divide(buf, world_size, False)
