"""Hierarchical collectives for communicators that span hosts, as NCCL and Horovod do them.

all_reduce:

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

all_gather: across hosts among the same local rank (each host sends its ranks' inputs over
the network once: (h-1)/h of the output per host, against (n-1)/n for a flat ring in host
order), then inside the host, then a copy into rank order. reduce_scatter: the reverse
(inside the host first, so only the host's partial sums cross). Broadcast and reduce need no
hierarchy: their flat algorithms in host order already cross each host's link once.

Integer and bitwise results equal the flat algorithms' bit for bit; floating-point sums
differ from them in summation order only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


Phase = tuple[str, "Communicator", Callable[[float], Any]]  # (what, where, run(timeout))


@dataclass(frozen=True)
class Hierarchy:
    """The two sub-communicators of a communicator that spans even hosts, and how their
    ranks map to its own: ``local`` (this host's ranks; local rank i of node j is world rank
    ``nodes[j][i]``) and ``cross`` (local rank i of every host, its rank j on node j)."""

    local: Communicator
    cross: Communicator
    nodes: tuple[tuple[int, ...], ...]

    @property
    def order(self) -> np.ndarray:
        """World ranks node by node: position j * L + i holds local rank i of node j."""
        return np.array([r for node in self.nodes for r in node])

    def run(self, name: str, phases: list[Phase], deadline: float) -> None:
        """Run ``phases`` in order within ``deadline`` (``time.monotonic()``). On an error,
        abort both sub-communicators (peers that wait on them for this rank must hear of
        it at once, not at their timeout) and raise it with ranks renumbered as in the
        whole communicator."""
        for what, comm, run in phases:
            try:
                run(max(0.0, deadline - time.monotonic()))
            except RingcommError as e:
                for sub in (self.local, self.cross):
                    sub.abort(f"hierarchical {name} failed: {what}")
                i = self.local.rank
                world = self.nodes[self.cross.rank] if comm is self.local else tuple(
                    node[i] for node in self.nodes
                )  # fmt: skip
                raise type(e)(
                    f"hierarchical {name}, {what}: {in_world_ranks(str(e), world)} (ranks as "
                    "numbered in the whole communicator)"
                ) from e


def allreduce(
    h: Hierarchy, buf: np.ndarray, op: ReduceOp, world_size: int, deadline: float
) -> None:
    """All-reduce ``buf`` in place: reduce-scatter inside the host, all_reduce of this local
    rank's slice across hosts, all-gather inside the host."""
    local, cross = h.local, h.cross
    inner = ReduceOp.SUM if op == ReduceOp.AVG else op  # AVG divides once, at the end
    n_local = local.size
    body = buf.size - buf.size % n_local
    slot = body // n_local
    phases: list[Phase] = []
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
    h.run("all_reduce", phases, deadline)
    if op == ReduceOp.AVG:
        native.divide(buf, world_size, False)


def all_gather(h: Hierarchy, out: np.ndarray, inp: np.ndarray, deadline: float) -> None:
    """Gather every rank's ``inp`` into ``out``: across hosts among this local rank first
    (each host sends its ranks' inputs over the network once), then inside the host, then
    into rank order."""
    local, cross = h.local, h.cross
    n_nodes, n_local, c = cross.size, local.size, inp.size
    by_node = np.empty(n_nodes * c, inp.dtype)  # this local rank's input of every host
    everything = np.empty(n_local * n_nodes * c, inp.dtype)  # [local i][node j]
    h.run("all_gather", [
        ("all-gather across hosts", cross, lambda t: cross.all_gather(by_node, inp, timeout=t)),
        ("all-gather inside the host", local, lambda t: local.all_gather(
            everything, by_node, timeout=t)),
    ], deadline)  # fmt: skip
    node_major = everything.reshape(n_local, n_nodes, c).transpose(1, 0, 2).reshape(-1, c)
    out.reshape(-1, c)[h.order] = node_major


def reduce_scatter(
    h: Hierarchy, out: np.ndarray, inp: np.ndarray, op: ReduceOp, world_size: int, deadline: float
) -> None:
    """Reduce ``inp`` and give rank r chunk r: reduce-scatter inside the host (local rank i
    gets the host's sum of the chunks of local rank i on every host), then across hosts."""
    local, cross = h.local, h.cross
    inner = ReduceOp.SUM if op == ReduceOp.AVG else op
    n_nodes, n_local, c = cross.size, local.size, out.size
    # the input's chunks reordered [local i][node j], so local rank i's share is contiguous
    staged = inp.reshape(-1, c)[h.order].reshape(n_nodes, n_local, c).transpose(1, 0, 2).copy()
    mine = np.empty(n_nodes * c, inp.dtype)
    h.run("reduce_scatter", [
        ("reduce-scatter inside the host", local, lambda t: local.reduce_scatter(
            mine, staged.reshape(-1), inner, timeout=t)),
        ("reduce-scatter across hosts", cross, lambda t: cross.reduce_scatter(
            out, mine, inner, timeout=t)),
    ], deadline)  # fmt: skip
    if op == ReduceOp.AVG:
        native.divide(out, world_size, False)
