"""Variable-size collectives with skewed counts against their even forms and against MPI's
``Allgatherv``/``Alltoallv``, in one launch.

    mpiexec -n 2 python bench/vcollectives.py [-b 1M] [-e 64M] [-f 4]

Per total size (the bytes the whole operation moves into the outputs): ``all_gatherv``
where rank 0 contributes 10x what each other rank does, and ``all_to_allv`` where rank 0
sends 10x what each other rank sends (spread evenly over destinations), each beside the
even operation of the same total bytes. MPI is timed first, before ringcomm initialises
(ringcomm's presence slows MPI in its process), then ringcomm. float32; a barrier before
every operation; median of ``--iters`` of the slowest rank.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from collectives import parse_size
from mpi4py import MPI

SKEW = 10


def skewed(total: int, n: int) -> list[int]:
    """Element counts per rank summing to ``total``: rank 0 has SKEW times the others."""
    base = total // (n - 1 + SKEW)
    counts = [SKEW * base] + [base] * (n - 1)
    counts[-1] += total - sum(counts)
    return counts


def plans(total: int, n: int, r: int) -> dict[str, dict[str, list[int]]]:
    """Counts of each case: all_gatherv's counts, all_to_allv's send and receive counts."""
    even = [total // n] * n
    out = {
        "all_gather even": {"counts": even},
        "all_gatherv skewed": {"counts": skewed(total, n)},
    }
    per_rank = skewed(total, n)  # what each rank sends in all, split over destinations
    send = [per_rank[r] // n] * n
    recv = [per_rank[s] // n for s in range(n)]
    out["all_to_all even"] = {"send": [total // n // n] * n, "recv": [total // n // n] * n}
    out["all_to_allv skewed"] = {"send": send, "recv": recv}
    return out


def timed(run: Callable[[], None], barrier: Callable[[], None], iters: int) -> float:
    times = []
    for _ in range(iters):
        barrier()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mpi_case(case: str, plan: dict[str, list[int]]) -> Callable[[], None]:
    world = MPI.COMM_WORLD
    if case.startswith("all_gather"):
        counts = plan["counts"]
        mine = np.ones(counts[world.rank], np.float32)
        out = np.empty(sum(counts), np.float32)
        displs = np.cumsum([0, *counts[:-1]]).tolist()
        return lambda: world.Allgatherv(mine, [out, counts, displs, MPI.FLOAT])
    send, recv = plan["send"], plan["recv"]
    src, out = np.ones(sum(send), np.float32), np.empty(sum(recv), np.float32)
    sd, rd = np.cumsum([0, *send[:-1]]).tolist(), np.cumsum([0, *recv[:-1]]).tolist()
    return lambda: world.Alltoallv([src, send, sd, MPI.FLOAT], [out, recv, rd, MPI.FLOAT])


def ringcomm_case(comm: object, case: str, plan: dict[str, list[int]]) -> Callable[[], None]:
    r = comm.rank  # type: ignore[attr-defined]
    if case.startswith("all_gather"):
        counts = plan["counts"]
        mine = np.ones(counts[r], np.float32)
        out = np.empty(sum(counts), np.float32)
        if case.endswith("even"):
            return lambda: comm.all_gather(out, mine)  # type: ignore[attr-defined]
        return lambda: comm.all_gatherv(out, mine, counts)  # type: ignore[attr-defined]
    send, recv = plan["send"], plan["recv"]
    src, out = np.ones(sum(send), np.float32), np.empty(sum(recv), np.float32)
    if case.endswith("even"):
        return lambda: comm.all_to_all(out, src)  # type: ignore[attr-defined]
    return lambda: comm.all_to_allv(out, src, send, recv)  # type: ignore[attr-defined]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-b", "--minbytes", default="1M")
    p.add_argument("-e", "--maxbytes", default="64M")
    p.add_argument("-f", "--stepfactor", type=int, default=4)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    world = MPI.COMM_WORLD
    n, r = world.size, world.rank
    sizes = []
    size = parse_size(args.minbytes)
    while size <= parse_size(args.maxbytes):
        sizes.append(size)
        size *= args.stepfactor
    # MPI first, untouched by ringcomm
    mpi: dict[tuple[int, str], float] = {}
    for nbytes in sizes:
        for case, plan in plans(nbytes // 4, n, r).items():
            run = mpi_case(case, plan)
            run()
            t = timed(run, world.Barrier, args.iters)
            mpi[(nbytes, case)] = world.allreduce(t, MPI.MAX)
    import ringcomm

    comm = ringcomm.init()
    rows = []
    for nbytes in sizes:
        for case, plan in plans(nbytes // 4, n, r).items():
            run = ringcomm_case(comm, case, plan)
            run()
            mine = np.array([timed(run, comm.barrier, args.iters)])
            comm.all_reduce(mine, ringcomm.MAX)
            rows.append((nbytes, case, float(mine[0]), mpi[(nbytes, case)]))
    if r == 0:
        library = MPI.Get_library_version().split()[0]
        print(
            f"# {n} ranks, ringcomm transport {comm.transport}, {library}"
            f" timed before ringcomm.init(); skew {SKEW}x on rank 0; median of {args.iters},"
            " slowest rank, barrier before each"
        )
        print(f"# {'bytes':>10} {'case':<20}{'ringcomm us':>12}{'vs even':>9}{'MPI us':>10}"
              f"{'MPI/ringcomm':>13}")  # fmt: skip
        even: dict[tuple[int, str], float] = {}
        for nbytes, case, t, m in rows:
            op = case.split()[0].rstrip("v")
            if case.endswith("even"):
                even[(nbytes, op)] = t
            ratio = t / even[(nbytes, op)]
            print(
                f"  {nbytes:>10} {case:<20}{t * 1e6:12.1f}{ratio:9.2f}{m * 1e6:10.1f}{m / t:13.2f}"
            )
    comm.close()


if __name__ == "__main__":
    main()
