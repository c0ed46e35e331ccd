"""Flat against hierarchical collectives across hosts made of network namespaces, with the
hosts' links rate-limited so that the network, not the CPUs, is the bottleneck.

    sudo python bench/hosts.py                      # all_reduce, 2 hosts x 2 ranks, 400 Mbit/s
    sudo python bench/hosts.py --op all_gather --hosts 3 --rate 200mbit --sizes 16M,64M
    sudo python bench/hosts.py --hosts 4 --ranks-per-host 1 --placements block \
        --algorithms recursive_doubling,rabenseifner,ring --sizes 4K,16M -n 20

Builds the hosts (bench/netns.py: a namespace each, its own /dev/shm, a tbf rate limit on
its link, all on one bridge), then for each placement of ranks on hosts (``block``: ranks
0..L-1 on host 0, ...; ``round-robin``: rank r on host r % hosts) runs bench/collectives.py
``--op`` once per algorithm. all_reduce: the flat ring in rank order
(``RINGCOMM_RING_ORDER=ranks``, what every earlier version did), the flat ring in host order
(the default for flat algorithms now) and the hierarchical one; all_gather and
reduce_scatter: the flat ring (``RINGCOMM_HIERARCHY=off``) and the hierarchical one.
``--algorithms`` compares flat algorithms by name instead (``RINGCOMM_<OP>_ALGORITHM``, the
hierarchy off). gloo
runs beside the hierarchical one in the same launch. A second launch per algorithm counts
the bytes each host sends on its link (the bridge's counters) for one operation of the
largest size (two operations, out of place and in place, halved). Tears everything down at
the end, also on errors. Traffic stays on the bridge.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from netns import Hosts, namespaces_work

ROOT = Path(__file__).resolve().parents[1]
COLLECTIVES = str(ROOT / "bench" / "collectives.py")
PORT = 29500  # a fresh namespace has nothing bound
_RING = "RINGCOMM_ALLREDUCE_ALGORITHM"
# (name, environment of its ranks) per operation
ALGORITHMS = {
    "all_reduce": (
        ("flat ring, rank order", {_RING: "ring", "RINGCOMM_RING_ORDER": "ranks"}),
        ("flat ring, host order", {_RING: "ring", "RINGCOMM_RING_ORDER": "hosts"}),
        ("hierarchical", {_RING: "hierarchical"}),
    ),
    # their flat ring goes in rank order: its output is laid out by rank
    "all_gather": (
        ("flat ring, rank order", {"RINGCOMM_HIERARCHY": "off"}),
        ("hierarchical", {"RINGCOMM_HIERARCHY": "auto"}),
    ),
}
ALGORITHMS["reduce_scatter"] = ALGORITHMS["all_gather"]
FORCE = {
    "all_reduce": "RINGCOMM_ALLREDUCE_ALGORITHM",
    "all_gather": "RINGCOMM_ALLGATHER_ALGORITHM",
    "reduce_scatter": "RINGCOMM_REDUCE_SCATTER_ALGORITHM",
}


def compared(op: str, names: str | None) -> tuple[tuple[str, dict[str, str]], ...]:
    """The (name, environment) of each run: ``names`` forced flat, else :data:`ALGORITHMS`."""
    if not names:
        return ALGORITHMS[op]
    return tuple((n, {FORCE[op]: n, "RINGCOMM_HIERARCHY": "off"}) for n in names.split(","))


def placement(kind: str, hosts: int, per_host: int) -> list[int]:
    """The host of each rank."""
    n = hosts * per_host
    return [r // per_host for r in range(n)] if kind == "block" else [r % hosts for r in range(n)]


def launch(
    hosts: Hosts, where: list[int], env: dict[str, str], args: list[str], timeout: float
) -> str:
    """Run bench/collectives.py ``args`` with rank r on host ``where[r]``; rank 0's output.
    Raises RuntimeError naming the ranks that failed."""
    job = uuid.uuid4().hex[:12]
    master = hosts.address(where[0])
    procs = []
    for r, h in enumerate(where):
        rank_env = {
            **os.environ,
            **env,
            "RINGCOMM_RANK": str(r),
            "RINGCOMM_SIZE": str(len(where)),
            "RINGCOMM_MASTER_ADDR": master,
            "RINGCOMM_MASTER_PORT": str(PORT),
            "RINGCOMM_JOB_ID": job,
            "MASTER_ADDR": master,  # the gloo peer's rendezvous
            "GLOO_SOCKET_IFNAME": "eth0",
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [*hosts.wrap(h), sys.executable, COLLECTIVES, *args]
        procs.append(
            subprocess.Popen(
                cmd, env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs, failed = [], []
    for r, p in enumerate(procs):
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, _ = p.communicate()
            failed.append(f"rank {r} hung")
        else:
            if p.returncode:
                failed.append(f"rank {r} exit {p.returncode}")
        outs.append(out)
    if failed:
        raise RuntimeError(", ".join(failed) + "\n" + "\n".join(o[-2000:] for o in outs))
    return outs[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", default="all_reduce", choices=sorted(ALGORITHMS))
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--ranks-per-host", type=int, default=2)
    parser.add_argument("--rate", default="400mbit", help="each host's link rate (tc tbf)")
    parser.add_argument("--sizes", default="16M,64M", help="sizes (comma-separated)")
    parser.add_argument("--placements", default="block,round-robin")
    parser.add_argument(
        "--algorithms", default=None, help="flat algorithms to compare, e.g. ring,rabenseifner"
    )
    parser.add_argument("-n", "--iters", default="3")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per launch")
    parser.add_argument("--json", default=None, help="append the rows here")
    args = parser.parse_args(argv)
    if not namespaces_work():
        print("bench/hosts.py needs root, iproute2 and unshare", file=sys.stderr)
        return 2
    sizes = args.sizes.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hosts = Hosts(args.hosts, Path(tmp), f"rate {args.rate}")
        try:
            print(f"# {args.hosts} hosts x {args.ranks_per_host} ranks, links: {hosts.shaping}")
            for kind in args.placements.split(","):
                where = placement(kind, args.hosts, args.ranks_per_host)
                for name, env in compared(args.op, args.algorithms):
                    if kind == "block" and name == "flat ring, host order":
                        continue  # in block placement rank order is host order
                    peer = "gloo" if name == "hierarchical" else "none"
                    out_json = Path(tmp) / "rows.json"
                    out_json.unlink(missing_ok=True)
                    text = launch(
                        hosts,
                        where,
                        env,
                        [args.op, "-b", sizes[0], "-e", sizes[-1], "-f", "4",
                         "-n", args.iters, "-w", "1", "--peer", peer, "--json", str(out_json)],
                        args.timeout,
                    )  # fmt: skip
                    print(f"## {kind}: {name}\n{text.rstrip()}", flush=True)
                    before = hosts.sent_bytes()
                    launch(
                        hosts,
                        where,
                        env,
                        [args.op, "-b", sizes[-1], "-e", sizes[-1], "-n", "1", "-w", "0",
                         "-c", "0"],
                        args.timeout,
                    )  # fmt: skip
                    per_op = [(b - a) / 2 for a, b in zip(before, hosts.sent_bytes(), strict=True)]
                    print(f"# MiB each host sent per {sizes[-1]} {args.op}: "
                          + ", ".join(f"{b / 2**20:.1f}" for b in per_op), flush=True)  # fmt: skip
                    for line in out_json.read_text().splitlines():
                        row = json.loads(line)
                        row.update(placement=kind, algorithm=name, rate=args.rate, sent=per_op)
                        rows.append(row)
        finally:
            hosts.remove()
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print(
        f"\n# {args.op}: busbw in GB/s of its natural form (the same launch's gloo beside the "
        f"hierarchical one); MiB each host sent per {args.op} of the largest size"
    )
    for row in rows:
        gloo = row["peers"].get("gloo")
        beside = f"gloo {gloo['busbw']:.4f}" if gloo else ""
        sent = ", ".join(f"{b / 2**20:.1f}" for b in row["sent"])
        print(
            f"{row['placement']:>12} | {row['algorithm']:<22} | {row['size']:>9} | "
            f"{row['busbw']:.4f} | {beside:>11} | {sent}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
