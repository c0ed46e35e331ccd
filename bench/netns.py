"""Hosts on one machine for multi-host tests and benchmarks: each "host" is a network
namespace with its own interface on a bridge, its own hostname and its own /dev/shm; ``tc``
limits a host's link rate (and adds delay where the kernel has netem).

Needs root, iproute2 (``ip``, ``tc``) and ``unshare``. Traffic stays on the bridge, which has
no address and no route out of the machine. Used by tests/test_hosts.py and bench/hosts.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SUBNET = "10.77.{id}"


def _sh(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")


def namespaces_work() -> bool:
    """Whether this process can make network namespaces (root, iproute2, unshare)."""
    if os.geteuid() != 0 or not all(shutil.which(c) for c in ("ip", "tc", "unshare")):
        return False
    name = f"rcprobe{os.getpid() % 100000}"
    try:
        _sh("ip", "netns", "add", name)
    except (RuntimeError, OSError):
        return False
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return True


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

    def sent_bytes(self) -> list[int]:
        """Bytes each host has sent on its link so far (its bridge port's received bytes)."""
        return [
            int(Path(f"/sys/class/net/{self.veth(h)}/statistics/rx_bytes").read_text())
            for h in range(self.count)
        ]
