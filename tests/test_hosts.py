"""Several hosts on one machine: each "host" is a network namespace (its own interface on
a bridge, its own hostname) with its own /dev/shm, and ``tc netem`` adds delay and a rate
limit to its link. Ranks on different hosts talk over TCP; ranks on one host over shared
memory. Then one host's link is cut, and the others must fail naming its rank.

Needs root, iproute2 (``ip``, ``tc``; .ci/run installs it) and ``unshare``; skips where a
namespace cannot be made. Traffic stays on the bridge, which has no address and no route
out of the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners import assert_passed, run_script_ranks

SCRIPT = str(Path(__file__).resolve().parent / "ranks" / "faults.py")
SUBNET = "10.77.{id}"


def _sh(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or not all(shutil.which(c) for c in ("ip", "tc", "unshare")):
        return False
    name = f"rcprobe{os.getpid() % 100000}"
    try:
        _sh("ip", "netns", "add", name)
    except (RuntimeError, OSError):
        return False
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return True


pytestmark = pytest.mark.skipif(
    not _namespaces_work(),
    reason="needs root, iproute2 and unshare to make network namespaces",
)


class Hosts:
    """``count`` hosts on a bridge: host h is namespace ``ns(h)`` at ``address(h)``."""

    made = 0

    def __init__(self, count: int, tmp: Path, netem: str) -> None:
        Hosts.made += 1
        self.tag = f"rc{os.getpid() % 1000}{Hosts.made}"
        self.id = 100 + (os.getpid() + Hosts.made) % 100
        self.count = count
        self.tmp = tmp
        self.shaping = "none"
        self.bridge = f"{self.tag}br"
        try:
            self._make(netem)
        except BaseException:
            self.remove()
            raise

    def _make(self, netem: str) -> None:
        count, tmp = self.count, self.tmp
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "link", "set", self.bridge, "up")
        for h in range(count):
            ns, veth = self.ns(h), self.veth(h)
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "link", "set", veth, "master", self.bridge)
            _sh("ip", "link", "set", veth, "up")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.address(h)}/24", "dev",
                "eth0")  # fmt: skip
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            if netem:
                self.shaping = self._shape(ns, netem)
            (tmp / f"shm{h}").mkdir()

    @staticmethod
    def _shape(ns: str, netem: str) -> str:
        """Add ``netem`` to the host's link; where the kernel has no netem (this machine's
        has none), limit the rate with tbf instead, without the delay. Returns what it did."""
        tc = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root"]
        try:
            _sh(*tc, "netem", *netem.split())
            return f"netem {netem}"
        except RuntimeError as e:
            if "unknown" not in str(e):
                raise
        words = netem.split()
        rate = words[words.index("rate") + 1] if "rate" in words else "1gbit"
        _sh(*tc, "tbf", "rate", rate, "burst", "256kb", "latency", "50ms")
        return f"tbf rate {rate} (no netem in this kernel: no delay)"

    def ns(self, h: int) -> str:
        return f"{self.tag}h{h}"

    def veth(self, h: int) -> str:
        return f"{self.tag}v{h}"

    def address(self, h: int) -> str:
        return f"{SUBNET.format(id=self.id)}.{h + 1}"

    def wrap(self, h: int) -> list[str]:
        """Run a command on host h: its network, its hostname, its own /dev/shm."""
        script = f'hostname host{h} && mount --bind {self.tmp}/shm{h} /dev/shm && exec "$@"'
        return ["ip", "netns", "exec", self.ns(h), "unshare", "-m", "-u", "sh", "-c", script, "sh"]

    def cut(self, h: int) -> None:
        _sh("ip", "link", "set", self.veth(h), "down")

    def remove(self) -> None:
        for h in range(self.count):
            subprocess.run(["ip", "link", "del", self.veth(h)], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.ns(h)], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


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


@pytest.mark.parametrize("hosts", [(3, "delay 1ms")], indirect=True)
def test_a_cut_link_fails_every_other_rank_naming_it(hosts: Hosts) -> None:
    n = 3
    cut_at: list[float] = []

    def cut() -> None:
        cut_at.append(time.time())
        hosts.cut(2)

    timer = threading.Timer(10.0, cut)  # ranks are all-reducing by then
    timer.start()
    try:
        results, _, text = run_script_ranks(
            SCRIPT,
            "link_cut",
            n,
            wrap={r: hosts.wrap(r) for r in range(n)},
            master_addr=hosts.address(0),
            timeout=90,
        )
    finally:
        timer.cancel()
    assert cut_at, "the link was never cut (the ranks ended first)\n" + text
    assert_passed("link_cut", n, results, text)
    for r in range(n - 1):
        error = results[r]["error"]
        assert error.startswith("PeerLostError") and "rank 2" in error, (r, error)
        assert results[r]["at"] - cut_at[0] < 5.0, (r, results[r]["at"] - cut_at[0])
        print(f"rank {r}: {results[r]['at'] - cut_at[0]:.2f} s after the cut: {error}")
