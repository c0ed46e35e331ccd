"""Does ringcomm change how the rest of the process performs? MPI's own collectives, timed in
one process before ``ringcomm.init()``, while an idle communicator is open, and after
``close()``, alternating phases so that drift shows as spread, not as an effect.

    mpiexec -n 2 python bench/side_effects.py
    RINGCOMM_TUNE_MALLOC=1 mpiexec -n 2 python bench/side_effects.py

Prints, per size, the median over rounds of each phase's median time (slowest rank), and
the spread (min-max over rounds) of the "before" phase: the noise an effect must exceed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from mpi4py import MPI

SIZES = (4 << 10, 1 << 20, 16 << 20)


def time_allreduce(nbytes: int, iters: int) -> float:
    """Median seconds of MPI_Allreduce (in place, float32 sum) on this many bytes, max over
    ranks."""
    world = MPI.COMM_WORLD
    buf = np.ones(nbytes // 4, np.float32)
    for _ in range(3):
        world.Allreduce(MPI.IN_PLACE, buf)
    times = []
    for _ in range(iters):
        world.Barrier()
        t0 = time.perf_counter()
        world.Allreduce(MPI.IN_PLACE, buf)
        times.append(time.perf_counter() - t0)
    return world.allreduce(statistics.median(times), op=MPI.MAX)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    import ringcomm  # after MPI: the "before" phase runs with ringcomm imported, not initialised

    results: dict[str, dict[int, list[float]]] = {
        p: {s: [] for s in SIZES} for p in ("before", "open", "closed")
    }
    for _ in range(args.rounds):
        for size in SIZES:
            results["before"][size].append(time_allreduce(size, args.iters))
        comm = ringcomm.init()
        x = np.ones(16 << 18, np.float32)  # 16 MiB through ringcomm first, as a user would
        comm.all_reduce(x)
        comm.barrier()
        for size in SIZES:
            results["open"][size].append(time_allreduce(size, args.iters))
        comm.close()
        for size in SIZES:
            results["closed"][size].append(time_allreduce(size, args.iters))
    if MPI.COMM_WORLD.Get_rank() == 0:
        setting = os.environ.get("RINGCOMM_TUNE_MALLOC", "default")
        print(
            f"# MPI_Allreduce float32, {MPI.COMM_WORLD.Get_size()} ranks, "
            f"{MPI.Get_library_version().splitlines()[0]}, RINGCOMM_TUNE_MALLOC={setting}, "
            f"median of {args.iters} (slowest rank), {args.rounds} alternating rounds"
        )
        head = ("bytes", "before us", "(spread)", "open us", "closed us")
        print("# {:>9} | {:>10} {:>17} | {:>9} | {:>9}".format(*head))
        for size in SIZES:
            b = results["before"][size]
            row = [statistics.median(results[p][size]) * 1e6 for p in ("before", "open", "closed")]
            spread = f"({min(b) * 1e6:.1f}-{max(b) * 1e6:.1f})"
            print(f"  {size:>9} | {row[0]:>10.1f} {spread:>17} | {row[1]:>9.1f} | {row[2]:>9.1f}")


if __name__ == "__main__":
    main()
