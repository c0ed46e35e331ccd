"""Rank bodies for tests/test_faults.py: ``python tests/ranks/faults.py MODE`` in every rank,
started with RINGCOMM_* variables. A rank that passes prints ``PASS rank <r> MODE``; results go
out as ``RESULT <json>``."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

# Run as a script: make tests/ importable (ranks.*, data, runners).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import ringcomm


def rebuild(comm: ringcomm.Communicator) -> dict:
    """The last rank is killed mid-allreduce; the survivors abort, build a new communicator
    among themselves (same processes, new port) and carry on."""
    n, r = comm.size, comm.rank
    buf = np.ones(1 << 20, np.float32)
    lost = None
    for i in range(1000):
        if r == n - 1 and i == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            comm.all_reduce(buf)
        except ringcomm.PeerLostError as e:
            lost = str(e)
            break
    assert lost is not None, "the all_reduces went on without the killed rank"
    t0 = time.monotonic()
    comm.abort("a peer was lost")
    try:
        comm.all_reduce(buf)
    except ringcomm.CommClosedError as e:
        refused = str(e)
    else:
        raise AssertionError("an aborted communicator ran an operation")
    port = int(os.environ["REBUILD_PORT"])  # free, from the test (not master port + 1)
    survivors = ringcomm.init(rank=r, size=n - 1, master_port=port, timeout=30)
    x = np.full(1000, r + 1.0, np.float32)
    survivors.all_reduce(x)
    assert (x == sum(range(1, n))).all(), x[:4]
    rebuilt = time.monotonic() - t0
    survivors.close()
    return {"lost": lost, "refused": refused, "rebuilt_seconds": rebuilt}


def stall(comm: ringcomm.Communicator) -> dict:
    """The last rank never joins the second all_reduce in time: the others warn, then fail
    at the timeout naming the rank they waited for, and log their flight recorder."""
    buf = np.ones(1000, np.float32)
    comm.all_reduce(buf)
    if comm.rank == comm.size - 1:
        time.sleep(5)
        return {}
    t0 = time.monotonic()
    try:
        comm.all_reduce(buf, timeout=3)
    except ringcomm.CommTimeoutError as e:
        return {"error": str(e), "seconds": time.monotonic() - t0}
    raise AssertionError("an all_reduce finished without the stalled rank")


def timeline(comm: ringcomm.Communicator) -> dict:
    """A few operations with RINGCOMM_TIMELINE set (the test reads the traces). The first
    two go point to point, whose steps are traced (the board's are native calls)."""
    buf = np.ones(1 << 20, np.float32)
    comm.all_reduce(buf, algorithm="ring")
    comm.broadcast(buf, root=0, algorithm="binomial")
    comm.all_reduce(np.ones(10, np.float32), async_op=True).wait()
    comm.barrier()
    return {}


def soak(comm: ringcomm.Communicator) -> dict:
    """Thousands of small and hundreds of large mixed operations, sync and async, across
    sub-communicators: no wrong result, and no growth in open files or memory after a
    warm-up."""
    n, r = comm.size, comm.rank
    half = comm.split(color=r % 2)
    assert half is not None
    rng = np.random.default_rng(1234)  # the same sequence of choices on every rank

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def round_of_work(small: int, large: int) -> int:
        checked = 0
        pending = []
        for i in range(small):
            kind = int(rng.integers(0, 5))
            if kind == 0:
                x = np.full(int(rng.integers(1, 300)), r + 1, np.int64)
                comm.all_reduce(x)
                assert (x == n * (n + 1) // 2).all()
            elif kind == 1:
                x = np.full(64, float(r), np.float32)
                pending.append((comm.all_reduce(x, ringcomm.MAX, async_op=True), x, n - 1.0))
            elif kind == 2:
                out = np.empty(8 * n, np.int32)
                comm.all_gather(out, np.full(8, r, np.int32))
                assert (out == np.repeat(np.arange(n), 8)).all()
            elif kind == 3:
                x = np.full(100, r + 1.0, np.float64)
                half.all_reduce(x)
                want = sum(q + 1 for q in range(n) if q % 2 == r % 2)
                assert (x == want).all()
            else:
                x = np.full(32, r, np.int16) if r == i % n else np.zeros(32, np.int16)
                comm.broadcast(x, root=i % n)
                assert (x == i % n).all()
            checked += 1
            if len(pending) > 8:
                for work, x, want in pending:
                    work.wait()
                    assert (x == want).all()
                pending.clear()
        for work, x, want in pending:
            work.wait()
            assert (x == want).all()
        for _ in range(large):
            x = np.full(int(rng.integers(1, 4)) << 20, 1.0, np.float32)
            comm.all_reduce(x, ringcomm.AVG)
            assert (x == 1.0).all()
            sub = comm.split(color=0)  # a sub-communicator made and closed each time
            assert sub is not None
            sub.barrier()
            sub.close()
            checked += 1
        return checked

    checked = round_of_work(500, 20)  # warm-up: caches, pools, kernels
    fds0, rss0 = fds(), rss_kib()
    checked += round_of_work(3000, 100)
    comm.barrier()
    # ZeroMQ closes sockets on its I/O thread: give the last sub-communicators' a moment
    # (a leak would not go away; 100 of them would leave hundreds of descriptors).
    settle = time.monotonic() + 3
    while fds() > fds0 and time.monotonic() < settle:
        time.sleep(0.1)
    grown = {"fds": fds() - fds0, "rss_kib": rss_kib() - rss0, "checked": checked}
    half.close()
    return grown


def hosts(comm: ringcomm.Communicator) -> dict:
    """Ranks on several "hosts" (network namespaces, test_hosts.py): every collective,
    checked."""
    from ranks.shm import check_ops

    check_ops(comm)
    return {"transport": comm.transport}


def topology(comm: ringcomm.Communicator) -> dict:
    """Ranks on several "hosts" (test_hosts.py): what the topology says, and the automatic
    all_reduce (hierarchical across even hosts) against the flat ring and numpy."""
    n, r = comm.size, comm.rank
    failures = []
    for count in (0, 3, 4099, 1 << 20):
        for dtype, op in (("int32", ringcomm.SUM), ("float32", ringcomm.AVG)):
            rng = np.random.default_rng(count)
            everyone = rng.integers(0, 1000, size=(n, count)).astype(dtype)
            want = everyone.sum(axis=0, dtype=dtype) if op == ringcomm.SUM else everyone.mean(0)
            got = {}
            for algorithm in (None, "ring"):
                got[algorithm] = everyone[r].copy()
                comm.all_reduce(got[algorithm], op, algorithm=algorithm)
                if not np.allclose(got[algorithm], want, rtol=1e-6):
                    failures.append(f"{algorithm} {dtype} {count}")
            if dtype == "int32" and not np.array_equal(got[None], got["ring"]):
                failures.append(f"auto and ring differ: {dtype} {count}")
    local = comm.split_local()
    return {
        "where": [comm.local_rank, comm.local_size, comm.node_rank, comm.num_nodes],
        "local_transport": local.transport,
        "cross": [comm.split_cross().size, comm.split_cross().transport],
        "hierarchical": "reduce_scatter" in {row["op"] for row in local.stats()},
        "failures": failures,
    }


def link_cut(comm: ringcomm.Communicator) -> dict:
    """All-reduces until one host's link is cut (by the test); report what each rank saw
    and when (wall-clock time, to compare with the moment of the cut)."""
    buf = np.ones(1 << 18, np.float32)
    print("STARTED", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            comm.all_reduce(buf, timeout=30)
        except ringcomm.RingcommError as e:
            return {"error": f"{type(e).__name__}: {e}", "at": time.time()}
    raise AssertionError("no error within 60 s of all-reduces")


def retract(comm: ringcomm.Communicator) -> dict:
    """A sender whose gather fails (its root is stopped, SIGSTOP) reuses its buffer; once the
    root runs again it must take the bytes as they were sent, or fail: never the new ones.
    Over sockets the unsent frames point at the buffer, over shared memory the root reads
    it by address."""
    pids = np.zeros(2, np.int64)
    comm.all_gather(pids, np.array([os.getpid()], np.int64))
    count = 1 << 20  # 4 MiB of float32: zero-copy frames, or 4 segments read by address
    if comm.rank == 0:
        data = np.ones(count, np.float32)
        os.kill(int(pids[1]), signal.SIGSTOP)
        try:
            comm.gather(None, data, root=1, timeout=1.5)
        except ringcomm.RingcommError as e:
            failed = type(e).__name__
        else:
            os.kill(int(pids[1]), signal.SIGCONT)
            raise AssertionError("a gather to a stopped root returned")
        data[:] = 7.0  # the caller reuses its buffer after the failure
        os.kill(int(pids[1]), signal.SIGCONT)
        time.sleep(4.0)  # stay up while the root reads
        return {"sender": failed}
    out = np.zeros(2 * count, np.float32)
    try:
        comm.gather(out, np.ones(count, np.float32), root=1, timeout=10)
    except ringcomm.RingcommError as e:
        return {"root": f"failed: {type(e).__name__}"}
    changed = int(np.count_nonzero(out[:count] != 1.0))
    assert changed == 0, f"the root took {changed} changed elements from a failed sender"
    return {"root": "intact"}


MODES = {
    "rebuild": rebuild,
    "stall": stall,
    "timeline": timeline,
    "soak": soak,
    "hosts": hosts,
    "link_cut": link_cut,
    "topology": topology,
    "retract": retract,
}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)  # ringcomm's warnings and errors to stderr
    mode = sys.argv[1]
    comm = ringcomm.init(timeout=30)
    rank = comm.rank
    result = MODES[mode](comm)
    comm.close()
    print(f"RESULT {json.dumps(result)}", flush=True)
    print(f"PASS rank {rank} {mode}", flush=True)


if __name__ == "__main__":
    main()
