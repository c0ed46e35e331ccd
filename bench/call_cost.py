"""What one small blocking call costs, op by op: the per-call floor of the Python path
(validation, numbering, the flight recorder, the board's native piece).

    ringcomm-run -n 2 python bench/call_cost.py            # 4 KiB, 3 rounds of 50,000 calls
    python bench/call_cost.py                              # n=1: the Python path alone

Each op runs back to back; a round's time is its calls' mean, the figure the best of the
rounds (rank 0's; at n > 1 the ranks pace each other). Compare two builds in alternating
launches (``PYTHONPATH=<worktree>`` for the other), not across days.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

import ringcomm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=4096, help="per rank's input")
    parser.add_argument("--calls", type=int, default=50_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with ringcomm.init() as comm:
        n, count = comm.size, max(1, args.bytes // 4)
        one = np.ones(count, np.float32)
        whole = np.ones(n * count, np.float32)
        gathered = np.ones(n * count, np.float32)  # in place: this rank's slot is the input
        slot = slice(comm.rank * count, (comm.rank + 1) * count)
        ops: dict[str, Callable[[], object]] = {
            "all_reduce": lambda: comm.all_reduce(one),
            "all_gather": lambda: comm.all_gather(whole, one),
            "reduce_scatter": lambda: comm.reduce_scatter(one, whole),
            "all_gather in place": lambda: comm.all_gather(gathered, gathered[slot]),
            "reduce_scatter in place": lambda: comm.reduce_scatter(whole[slot], whole),
            "broadcast": lambda: comm.broadcast(one, 0),
            "reduce": lambda: comm.reduce(one, 0),
            "barrier": comm.barrier,
            # A barrier then a broadcast: what bench/collectives.py --barrier times a part
            # of (a barrier that lets ranks leave together shows there as a slower op).
            "barrier+broadcast": lambda: (comm.barrier(), comm.broadcast(one, 0)),
        }
        figures = {}
        for name, call in ops.items():
            for _ in range(1000):  # compile, warm the caches
                call()
            best = float("inf")
            for _ in range(args.rounds):
                comm.barrier()
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    call()
                best = min(best, (time.perf_counter() - t0) / args.calls)
            figures[name] = best * 1e6
        if comm.rank == 0:
            print(f"# n={n}, {args.bytes} bytes a rank, us per blocking call (best of rounds)")
            for name, us in figures.items():
                print(f"{name:>23} {us:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
