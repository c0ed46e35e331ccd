"""Several hosts on one machine: each "host" is a network namespace (its own interface on
a bridge, its own hostname) with its own /dev/shm, and ``tc netem`` adds delay and a rate
limit to its link. Ranks on different hosts talk over TCP; ranks on one host over shared
memory. Then one host's link is cut, and the others must fail naming its rank.

Needs root, iproute2 (``ip``, ``tc``; .ci/run installs it) and ``unshare``; skips where a
namespace cannot be made. Traffic stays on the bridge, which has no address and no route
out of the machine.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners import assert_passed, run_script_ranks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from netns import Hosts, namespaces_work

SCRIPT = str(Path(__file__).resolve().parent / "ranks" / "faults.py")


pytestmark = pytest.mark.skipif(
    not namespaces_work(),
    reason="needs root, iproute2 and unshare to make network namespaces",
)


@pytest.fixture
def hosts(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Hosts]:
    count, netem = request.param
    made = Hosts(count, tmp_path, netem)
    try:
        yield made
    finally:
        made.remove()


@pytest.mark.parametrize("hosts", [(2, "delay 1ms rate 1gbit")], indirect=True)
def test_collectives_across_hosts_with_delay_and_a_rate_limit(hosts: Hosts) -> None:
    """Two hosts of two ranks: shared memory within a host, TCP across (shm+zmq)."""
    n = 4
    wrap = {r: hosts.wrap(r // 2) for r in range(n)}
    results, _, text = run_script_ranks(
        SCRIPT, "hosts", n, wrap=wrap, master_addr=hosts.address(0), timeout=180
    )
    assert_passed("hosts", n, results, text)
    assert {res["transport"] for res in results.values()} == {"shm+zmq"}, results
    print(f"links: {hosts.shaping}")  # shown with pytest -s


def _all_reduce_until_a_cut(
    hosts: Hosts, placement: list[int], host: int
) -> tuple[dict[int, dict], float, str]:
    """Ranks on ``placement``'s hosts all-reduce until ``host``'s link is cut, 10 s in;
    return every rank's result (its error and when), the time of the cut, the output."""
    n = len(placement)
    cut_at: list[float] = []

    def cut() -> None:
        cut_at.append(time.time())
        hosts.cut(host)

    timer = threading.Timer(10.0, cut)  # ranks are all-reducing by then
    timer.start()
    try:
        results, _, text = run_script_ranks(
            SCRIPT,
            "link_cut",
            n,
            wrap={r: hosts.wrap(h) for r, h in enumerate(placement)},
            master_addr=hosts.address(placement[0]),
            timeout=90,
        )
    finally:
        timer.cancel()
    assert cut_at, "the link was never cut (the ranks ended first)\n" + text
    assert_passed("link_cut", n, results, text)
    return results, cut_at[0], text


@pytest.mark.parametrize("hosts", [(3, "delay 1ms")], indirect=True)
def test_a_cut_link_fails_every_other_rank_naming_it(hosts: Hosts) -> None:
    n = 3
    results, cut_time, _ = _all_reduce_until_a_cut(hosts, [0, 1, 2], 2)
    for r in range(n - 1):
        error = results[r]["error"]
        assert error.startswith("PeerLostError") and "rank 2" in error, (r, error)
        assert results[r]["at"] - cut_time < 5.0, (r, results[r]["at"] - cut_time)
        print(f"rank {r}: {results[r]['at'] - cut_time:.2f} s after the cut: {error}")


@pytest.mark.parametrize("hosts", [(2, "delay 1ms")], indirect=True)
def test_a_cut_link_in_a_hierarchical_all_reduce_names_the_other_host(hosts: Hosts) -> None:
    """2 hosts x 2 ranks all-reducing hierarchically (shared memory in the host, sockets
    across) when host 1's link is cut: every rank fails with PeerLostError within the usual
    bound. A rank in the phase across hosts names, in the whole communicator's numbering,
    the rank of the other host it lost; one that was past it names its host mate, which
    gave up the local phases on losing the other host (peers do not pass reasons on)."""
    n, placement = 4, [0, 0, 1, 1]
    results, cut_time, text = _all_reduce_until_a_cut(hosts, placement, 1)
    named_across = {h: False for h in (0, 1)}
    for r in range(n):
        error = results[r]["error"]
        others = [q for q in range(n) if placement[q] != placement[r]]
        mate = next(q for q in range(n) if q != r and placement[q] == placement[r])
        assert error.startswith("PeerLostError: hierarchical all_reduce"), (r, error)
        across = "across hosts" in error and any(
            f"lost its connection to rank {q}" in error for q in others
        )
        assert across or ("inside the host" in error and f"rank {mate} " in error), (r, error)
        named_across[placement[r]] |= across
        # heartbeats notice the cut within their interval + timeout (4 s), then the 0.2 s
        # grace; a rank that hears it from its host mate one hop later (measured 3.4-4.3 s)
        assert results[r]["at"] - cut_time < 6.0, (r, results[r]["at"] - cut_time)
        print(f"rank {r}: {results[r]['at'] - cut_time:.2f} s after the cut: {error}")
    assert all(named_across.values()), "on some host no rank named the other host\n" + text


@pytest.mark.parametrize(
    "hosts, placement",
    [
        ((2, ""), [0, 1, 0, 1]),  # 2 hosts x 2 ranks, round-robin
        ((3, ""), [0, 1, 2, 0, 1, 2]),  # 3 hosts x 2 ranks, round-robin
        ((2, ""), [0, 0, 1]),  # uneven: 2 + 1
    ],
    indirect=["hosts"],
    ids=["2x2-round-robin", "3x2-round-robin", "uneven-2+1"],
)
def test_topology_and_hierarchical_all_reduce_across_hosts(
    hosts: Hosts, placement: list[int]
) -> None:
    """Every rank knows its host and its place there; all_reduce goes hierarchical across
    even hosts (shared memory inside, sockets across) and stays flat across uneven ones,
    with the flat ring's results."""
    n = len(placement)
    wrap = {r: hosts.wrap(h) for r, h in enumerate(placement)}
    results, _, text = run_script_ranks(
        SCRIPT,
        "topology",
        n,
        wrap=wrap,
        master_addr=hosts.address(placement[0]),
        timeout=180,
        env={"RINGCOMM_STATS": "1"},
    )
    assert_passed("topology", n, results, text)
    even = len(set(placement)) > 1 and len({placement.count(h) for h in placement}) == 1
    for r, res in results.items():
        mates = [q for q, h in enumerate(placement) if h == placement[r]]
        node = sorted(set(placement), key=placement.index).index(placement[r])
        assert res["where"] == [mates.index(r), len(mates), node, len(set(placement))], r
        assert res["failures"] == [], (r, res["failures"])
        assert res["hierarchical"] == even, (r, res)
        if len(mates) > 1:
            assert res["local_transport"] == "shm", (r, res)
        if res["cross"][0] > 1:
            assert res["cross"][1] == "zmq", (r, res)
