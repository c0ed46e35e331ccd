"""Topology: which ranks share a host (``local_rank``, ``node_rank``, ...), the host and
cross-host sub-communicators, and the hierarchical all_reduce built on them.

Thread ranks over the local transport *say* they are on different hosts (``run_threads(...,
hosts=...)``): the topology and the algorithms see several hosts, so their logic is tested
here at every shape; tests/test_hosts.py runs the same over real namespaces and sockets.
"""

from __future__ import annotations

import numpy as np
import pytest

import ringcomm
from ringcomm.algorithms import choice
from ringcomm.topology import Topology
from ringcomm.transport.base import KIND_COLLECTIVE, FramedTransport
from runners import run_threads

SHAPES = {
    "2x2 host by host": ["a", "a", "b", "b"],
    "2x2 round-robin": ["a", "b", "a", "b"],
    "3x2 round-robin": ["a", "b", "c", "a", "b", "c"],
    "2x3": ["a", "a", "a", "b", "b", "b"],
    "uneven 2+1": ["a", "a", "b"],
    "uneven 1+3 shuffled": ["b", "a", "b", "b"],
}


def test_topology_numbers_nodes_by_their_lowest_rank() -> None:
    t = Topology.from_hosts(3, ["b", "a", "b", "a", "c"])
    assert t.nodes == ((0, 2), (1, 3), (4,))
    assert t.node_of == (0, 1, 0, 1, 2)
    assert (t.node_rank, t.local_rank, t.local_size, t.num_nodes) == (1, 1, 2, 3)
    assert t.host_order == (0, 2, 1, 3, 4)
    assert not t.uniform
    assert Topology.from_hosts(0, ["x", "y", "x", "y"]).uniform
    sub = t.subset(1, [1, 3, 4])  # world ranks 1, 3, 4 as ranks 0, 1, 2
    assert (sub.nodes, sub.local_rank, sub.node_rank) == (((0, 1), (2,)), 1, 0)


def test_choice_goes_hierarchical_only_where_it_can_run() -> None:
    cfg = ringcomm.Config()
    even = Topology.from_hosts(0, ["a", "b", "a", "b"])
    uneven = Topology.from_hosts(0, ["a", "a", "b"])
    one_each = Topology.from_hosts(0, ["a", "b"])
    one_host = Topology.from_hosts(0, ["a", "a"])
    assert choice.choose_allreduce(4096, 4, cfg, None, even) == "hierarchical"
    assert choice.choose_allreduce(4096, 4, cfg, None, even, host_buffer=False) != "hierarchical"
    for flat in (uneven, one_each, one_host):
        assert choice.choose_allreduce(4096, 2, cfg, None, flat) == "recursive_doubling"
        # forced where it cannot run: the choice by size
        assert choice.choose_allreduce(64 << 20, 2, cfg, "hierarchical", flat) == "ring"
    assert choice.choose_allreduce(4096, 4, cfg, "ring", even) == "ring"  # forced flat wins
    forced = ringcomm.Config(allreduce_algorithm="ring")
    assert choice.choose_allreduce(4096, 4, forced, None, even) == "ring"


def _topology(comm: ringcomm.Communicator) -> dict:
    local, cross = comm.split_local(), comm.split_cross()
    assert comm.split_local() is local and comm.split_cross() is cross  # cached
    return {
        "local_rank": comm.local_rank,
        "local_size": comm.local_size,
        "node_rank": comm.node_rank,
        "num_nodes": comm.num_nodes,
        "local": (local.rank, local.size),
        "cross": (cross.rank, cross.size),
        "local_sum": _sum_of_ranks(local, comm.rank),
        "cross_sum": _sum_of_ranks(cross, comm.rank),
    }


def _sum_of_ranks(sub: ringcomm.Communicator, world_rank: int) -> int:
    buf = np.array([world_rank], np.int64)
    sub.all_reduce(buf, algorithm="ring")
    return int(buf[0])


@pytest.mark.parametrize("shape", SHAPES)
def test_topology_and_sub_communicators(shape: str) -> None:
    hosts = SHAPES[shape]
    got = run_threads(len(hosts), _topology, hosts=hosts)
    nodes = list(dict.fromkeys(hosts))  # hosts in the order of their lowest rank
    for r, res in enumerate(got):
        mates = [q for q, h in enumerate(hosts) if h == hosts[r]]
        same_local = [
            [q for q, h in enumerate(hosts) if h == node][mates.index(r)]
            for node in nodes
            if len([q for q, h in enumerate(hosts) if h == node]) > mates.index(r)
        ]
        assert res["node_rank"] == nodes.index(hosts[r]), (r, res)
        assert res["num_nodes"] == len(nodes)
        assert (res["local_rank"], res["local_size"]) == (mates.index(r), len(mates))
        assert res["local"] == (mates.index(r), len(mates))
        assert res["local_sum"] == sum(mates)
        assert res["cross"] == (same_local.index(r), len(same_local))
        assert res["cross_sum"] == sum(same_local)


def test_one_host_by_default() -> None:
    got = run_threads(3, lambda c: (c.local_rank, c.local_size, c.node_rank, c.num_nodes))
    assert got == [(0, 3, 0, 1), (1, 3, 0, 1), (2, 3, 0, 1)]


def _all_reduce_every_way(comm: ringcomm.Communicator) -> list[str]:
    """Auto (hierarchical where it can run), forced hierarchical and the flat ring, against
    numpy: integers and bitwise ops bit for bit, floats within summation-order tolerance."""
    n, r = comm.size, comm.rank
    failures = []
    for count in (0, 1, 5, 1000, 4099):  # empty, smaller than local_size, a tail, none
        for dtype, op in (
            ("int32", ringcomm.SUM),
            ("int64", ringcomm.MAX),
            ("uint8", ringcomm.BXOR),
            ("float64", ringcomm.SUM),
            ("float32", ringcomm.AVG),
        ):
            rng = np.random.default_rng(count)
            everyone = (rng.integers(0, 100, size=(n, count))).astype(dtype)
            if dtype.startswith("float"):
                everyone += rng.random((n, count)).astype(dtype)
            want = {
                ringcomm.SUM: lambda x: x.sum(axis=0, dtype=x.dtype),
                ringcomm.MAX: lambda x: x.max(axis=0),
                ringcomm.BXOR: lambda x: np.bitwise_xor.reduce(x, axis=0),
                ringcomm.AVG: lambda x: x.mean(axis=0, dtype=np.float64).astype(x.dtype),
            }[op](everyone)
            results = {}
            for algorithm in (None, "hierarchical", "ring", "rabenseifner"):
                buf = everyone[r].copy()
                comm.all_reduce(buf, op, algorithm=algorithm)
                results[algorithm] = buf
                what = f"{algorithm} {dtype} {op.name} count={count}"
                if dtype.startswith("int") or dtype == "uint8":
                    if not np.array_equal(buf, want):
                        failures.append(what)
                elif not np.allclose(buf, want, rtol=1e-5, atol=1e-5):
                    failures.append(what)
            if dtype.startswith(("int", "uint")):
                assert np.array_equal(results[None], results["ring"])  # bit for bit
    return failures


@pytest.mark.parametrize("shape", SHAPES)
def test_hierarchical_all_reduce_matches_the_flat_ones(shape: str) -> None:
    hosts = SHAPES[shape]
    failures = run_threads(len(hosts), _all_reduce_every_way, hosts=hosts)
    assert failures == [[]] * len(hosts)


def _which_algorithm_ran(comm: ringcomm.Communicator) -> list[str]:
    """The operations each communicator ran, from the statistics."""
    comm.all_reduce(np.ones(1000, np.float32))
    ran = [row["op"] for row in comm.stats()]
    local = comm.split_local()  # made by the hierarchical all_reduce, if it ran
    return ran + [f"local:{row['op']}" for row in local.stats()]


def test_auto_runs_the_hierarchy_across_even_hosts_only() -> None:
    cfg = ringcomm.Config(stats=True)
    even = run_threads(4, _which_algorithm_ran, hosts=["a", "b", "a", "b"], config=cfg)
    assert "local:reduce_scatter" in even[0] and "local:all_gather" in even[0], even
    uneven = run_threads(3, _which_algorithm_ran, hosts=["a", "a", "b"], config=cfg)
    # the flat algorithm ran on the world; only split_local()'s own split shows locally
    assert not any(op.startswith("local:reduce_scatter") for op in uneven[0]), uneven


def _ring_neighbours(comm: ringcomm.Communicator) -> None:
    comm.all_reduce(np.ones(4096, np.float32), algorithm="ring")


@pytest.mark.parametrize("order, right", [("hosts", [2, 3, 1, 0]), ("ranks", [1, 2, 3, 0])])
def test_flat_ring_goes_host_by_host(
    order: str, right: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round-robin placement (ranks 0, 2 on host a; 1, 3 on b): in host order the ring is
    0 -> 2 -> 1 -> 3 -> 0 and crosses between hosts twice, in rank order four times."""
    sent: set[tuple[int, int]] = set()
    real = FramedTransport.send

    def spy(self, dst, tag, *args, **kwargs):  # type: ignore[no-untyped-def]
        if tag.kind == KIND_COLLECTIVE and tag.seq > 0:  # the all_reduce, not the topology
            sent.add((self.rank, dst))
        return real(self, dst, tag, *args, **kwargs)

    monkeypatch.setattr(FramedTransport, "send", spy)
    run_threads(
        4,
        _ring_neighbours,
        hosts=["a", "b", "a", "b"],
        config=ringcomm.Config(ring_order=order),
    )
    assert sent == {(r, right[r]) for r in range(4)}


def test_errors_of_the_hierarchy_name_ranks_of_the_whole_communicator() -> None:
    from ringcomm.algorithms.hierarchical import in_world_ranks

    cross = (1, 3, 5)  # this local rank on hosts 0, 1, 2
    message = "rank 0 lost its connection to rank 2; ranks [0, 1] absent; rank(s) [2] stuck"
    assert in_world_ranks(message, cross) == (
        "rank 1 lost its connection to rank 5; ranks [1, 3] absent; rank(s) [5] stuck"
    )
    assert in_world_ranks("rank 7 is not one of them", cross) == "rank 7 is not one of them"


def _other_ops_across_hosts(comm: ringcomm.Communicator) -> list[str]:
    """all_gather and reduce_scatter (hierarchical across even hosts), out of place and in
    place, and broadcast and reduce from every root (flat, host by host), against numpy."""
    n, r = comm.size, comm.rank
    failures = []
    for count in (1, 3, 1000):
        everyone = np.arange(n * count * n, dtype=np.int64).reshape(n, n * count) * 7 % 1001
        mine = everyone[r, :count]
        gathered = np.concatenate([everyone[q, :count] for q in range(n)])
        out = np.zeros(n * count, np.int64)
        comm.all_gather(out, mine)
        failures += [] if np.array_equal(out, gathered) else [f"all_gather {count}"]
        out = np.zeros(n * count, np.int64)
        out[r * count : (r + 1) * count] = mine
        comm.all_gather(out, out[r * count : (r + 1) * count])
        failures += [] if np.array_equal(out, gathered) else [f"in-place all_gather {count}"]
        for op, reduce in ((ringcomm.SUM, np.sum), (ringcomm.MAX, np.max)):
            want = reduce(everyone, axis=0)[r * count : (r + 1) * count]
            part = np.zeros(count, np.int64)
            comm.reduce_scatter(part, everyone[r].copy(), op)
            failures += [] if np.array_equal(part, want) else [f"reduce_scatter {op.name}"]
            whole = everyone[r].copy()
            comm.reduce_scatter(whole[r * count : (r + 1) * count], whole, op)
            if not np.array_equal(whole[r * count : (r + 1) * count], want):
                failures.append(f"in-place reduce_scatter {op.name} {count}")
        avg = np.zeros(count, np.float64)
        comm.reduce_scatter(avg, everyone[r].astype(np.float64), ringcomm.AVG)
        if not np.allclose(avg, everyone.mean(axis=0)[r * count : (r + 1) * count]):
            failures.append(f"reduce_scatter AVG {count}")
        for root in range(n):
            buf = everyone[root, :count].copy() if r == root else np.zeros(count, np.int64)
            comm.broadcast(buf, root)
            if not np.array_equal(buf, everyone[root, :count]):
                failures.append(f"broadcast root={root} {count}")
            buf = everyone[r, :count].copy()
            comm.reduce(buf, root, ringcomm.SUM)
            want = everyone[:, :count].sum(axis=0) if r == root else everyone[r, :count]
            if not np.array_equal(buf, want):
                failures.append(f"reduce root={root} {count}")
    return failures


@pytest.mark.parametrize("shape", SHAPES)
def test_other_collectives_across_hosts(shape: str) -> None:
    hosts = SHAPES[shape]
    assert run_threads(len(hosts), _other_ops_across_hosts, hosts=hosts) == [[]] * len(hosts)


def _local_ops(comm: ringcomm.Communicator) -> list[str]:
    out = np.zeros(comm.size * 10, np.float32)
    comm.all_gather(out, np.ones(10, np.float32))
    comm.reduce_scatter(np.zeros(10, np.float32), out)
    return sorted({row["op"] for row in comm.split_local().stats()})


@pytest.mark.parametrize("mode, local_ops", [("auto", ["all_gather", "reduce_scatter"]),
                                             ("off", [])])  # fmt: skip
def test_hierarchy_variable_turns_the_hierarchy_off(mode: str, local_ops: list[str]) -> None:
    cfg = ringcomm.Config(stats=True, hierarchy=mode)
    got = run_threads(4, _local_ops, hosts=["a", "b", "a", "b"], config=cfg)
    assert [[op for op in ops if op != "split"] for ops in got] == [local_ops] * 4
