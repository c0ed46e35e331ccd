"""Which ranks of a communicator share a host: the node numbering behind ``comm.local_rank``,
``comm.node_rank`` and the hierarchical algorithms.

A host is what :func:`ringcomm.hosts.host_identity` names (hostname and boot). Nodes are
numbered in the order of their lowest rank; the ranks of a node in rank order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Topology:
    """The hosts of a communicator's ranks, seen from one rank."""

    rank: int
    hosts: tuple[str, ...]  # the host of each rank
    node_of: tuple[int, ...]  # the node number of each rank
    nodes: tuple[tuple[int, ...], ...]  # the ranks of each node, in rank order

    @classmethod
    def from_hosts(cls, rank: int, hosts: Sequence[str]) -> Topology:
        """The topology of ranks whose hosts are ``hosts`` (one entry per rank)."""
        number: dict[str, int] = {}
        members: list[list[int]] = []
        node_of = []
        for r, host in enumerate(hosts):
            if host not in number:
                number[host] = len(members)
                members.append([])
            node_of.append(number[host])
            members[number[host]].append(r)
        return cls(rank, tuple(hosts), tuple(node_of), tuple(tuple(m) for m in members))

    @cached_property  # (asked on every all_reduce: computed once)
    def node_rank(self) -> int:
        """This rank's node."""
        return self.node_of[self.rank]

    @cached_property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @cached_property
    def local_rank(self) -> int:
        """This rank's place among the ranks of its node."""
        return self.nodes[self.node_rank].index(self.rank)

    @cached_property
    def local_size(self) -> int:
        """The number of ranks on this rank's node."""
        return len(self.nodes[self.node_rank])

    @cached_property
    def uniform(self) -> bool:
        """Every node has as many ranks as every other."""
        return len({len(m) for m in self.nodes}) == 1

    @cached_property
    def host_order(self) -> tuple[int, ...]:
        """The ranks node by node (each node's in rank order): the order a ring follows so
        that it leaves each host once."""
        return tuple(r for m in self.nodes for r in m)

    def subset(self, rank: int, members: Sequence[int]) -> Topology:
        """The topology of a sub-communicator whose rank i is rank ``members[i]`` here."""
        return Topology.from_hosts(rank, [self.hosts[m] for m in members])
