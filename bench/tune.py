"""Measure which algorithm is fastest for each collective and size on this machine, and
write the choices into the tune file ringcomm reads at init (ringcomm.algorithms.tuning).

    ringcomm-run -n 4 python bench/tune.py                 # all five operations
    ringcomm-run -n 2 python bench/tune.py --ops all_reduce -b 4K -e 16M --dry-run

Every candidate algorithm of each operation (``direct`` only where the ranks can have a
shared-memory board) runs on every size, back to back; a candidate's time is the median
over ``-n`` iterations on each rank, then the slowest rank. The fastest per size wins from
that size up to the next one measured. The entries are keyed by transport and world size,
so run it once per world size you use (entries of other sizes are kept). ``--dry-run``
prints the table and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import ringcomm
from ringcomm.algorithms import tuning
from ringcomm.config import ALGORITHMS, parse_size

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "all_to_all")
# Candidates that take part in a flat comparison (star is for teaching; hierarchical runs
# across hosts only and is chosen by topology, not size).
NOT_MEASURED = ("star", "hierarchical")


def candidates(op: str, board: bool, size: int) -> list[str]:
    """The algorithms of ``op`` worth timing on a communicator of ``size`` ranks."""
    skip = set(NOT_MEASURED)
    if not board:
        skip.add("direct")
    if size & (size - 1):  # recursive halving would run the ring
        skip.add("recursive_halving")
    return [a for a in ALGORITHMS[op] if a not in skip]


def issuer(comm: ringcomm.Communicator, op: str, nbytes: int, alg: str) -> Callable[[], Any]:
    """One call of ``op`` on ``nbytes`` (the whole buffer) with ``alg``."""
    n = comm.size
    count = max(n, nbytes // 4 // n * n)
    buf = np.ones(count, np.float32)
    part = np.ones(count // n, np.float32)
    if op == "all_reduce":
        return lambda: comm.all_reduce(buf, algorithm=alg)
    if op == "all_gather":
        return lambda: comm.all_gather(buf, part, algorithm=alg)
    if op == "reduce_scatter":
        return lambda: comm.reduce_scatter(part, buf, algorithm=alg)
    if op == "broadcast":
        return lambda: comm.broadcast(buf, 0, algorithm=alg)
    if op == "all_to_all":
        out = np.empty_like(buf)
        return lambda: comm.all_to_all(out, buf, algorithm=alg)
    return lambda: comm.reduce(buf, 0, algorithm=alg)


def time_us(
    comm: ringcomm.Communicator, calls: dict[str, Callable[[], Any]], args: argparse.Namespace
) -> dict[str, float]:
    """Median microseconds per call of each candidate on each rank, then the slowest
    rank's. The candidates take turns, ``--rounds`` times, so a machine whose speed drifts
    (a shared host) favours none of them."""
    times: dict[str, list[float]] = {a: [] for a in calls}
    per_round = max(1, args.iters // args.rounds)
    for _ in range(args.rounds):
        for alg, call in calls.items():
            for _ in range(args.warmup):
                call()
            comm.barrier()
            for _ in range(per_round):
                t0 = time.perf_counter()
                call()
                times[alg].append(time.perf_counter() - t0)
    worst = np.array([np.median(times[a]) * 1e6 for a in calls])
    comm.all_reduce(worst, ringcomm.MAX)
    return dict(zip(calls, worst.tolist(), strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated operations")
    parser.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("4K"))
    parser.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("64M"))
    parser.add_argument("-f", "--stepfactor", type=int, default=4)
    parser.add_argument("-n", "--iters", type=int, default=20)
    parser.add_argument("-w", "--warmup", type=int, default=2, help="untimed calls per turn")
    parser.add_argument("--rounds", type=int, default=4, help="turns each candidate takes")
    parser.add_argument(
        "--output", default=None, help="the tune file (default: the one init reads)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    for op in ops:
        if op not in OPS:
            parser.error(f"--ops {op!r}: expected some of {', '.join(OPS)}")
    # The tuned choice must not steer what it measures: every call names its algorithm,
    # and a communicator made with no tune file keeps the defaults for the rest.
    config = ringcomm.Config.from_env({**os.environ, "RINGCOMM_TUNE_FILE": "none"})
    comm = ringcomm.init(config=config)
    # The "shm" transport means every rank shares this host: the board is possible.
    board = comm.transport == "shm" and config.shm_board_bytes > 0
    sizes = []
    s = args.minbytes
    while s <= args.maxbytes:
        sizes.append(s)
        s *= args.stepfactor
    entries = []
    for op in ops:
        algs = candidates(op, board, comm.size)
        if comm.rank == 0:
            print(f"# {op}, {comm.size} ranks, transport {comm.transport}: median us, slowest rank")
            print(f"# {'bytes':>10} " + " ".join(f"{a:>18}" for a in algs) + "  fastest")
        fastest = {}
        for nbytes in sizes:
            times = time_us(comm, {a: issuer(comm, op, nbytes, a) for a in algs}, args)
            fastest[nbytes] = min(times, key=times.__getitem__)
            if comm.rank == 0:
                cells = " ".join(f"{times[a]:18.1f}" for a in algs)
                print(f"  {nbytes:>10} {cells}  {fastest[nbytes]}", flush=True)
        spec = tuning.ranges(fastest)
        entries.append(
            {"transport": comm.transport, "size": comm.size, "op": op, "algorithms": spec}
        )
        if comm.rank == 0:
            print(f"# {op}: {spec}", flush=True)
    if comm.rank == 0 and not args.dry_run:
        path = args.output or tuning.default_path()
        tuning.save(path, socket.gethostname(), entries)
        print(f"# wrote {len(entries)} entries for {comm.transport} x {comm.size} ranks to {path}")
    comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
