"""What RINGCOMM_STATS=1 costs per operation: one process, two communicators of one rank,
one with statistics and one without, timed in alternating rounds.

    python bench/stats_overhead.py            # 4 KiB all_reduce, 8 rounds of 10,000 calls
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import ringcomm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=10_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    buf = np.ones(max(1, args.bytes // 4), np.float32)
    comms = {on: ringcomm.init(config=ringcomm.Config(stats=on)) for on in (False, True)}
    for comm in comms.values():  # compile the kernels, warm the caches
        for _ in range(2000):
            comm.all_reduce(buf)
    per_call: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for on, comm in comms.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                comm.all_reduce(buf)
            per_call[on].append((time.perf_counter() - t0) / args.calls * 1e6)
    print(f"# all_reduce of {buf.nbytes} B, n=1, {args.rounds} rounds of {args.calls} calls (us)")
    for on in (False, True):
        rounds = " ".join(f"{t:.2f}" for t in per_call[on])
        median = statistics.median(per_call[on])
        print(f"stats {'on ' if on else 'off'}: median {median:.2f}  rounds {rounds}")
    cost = statistics.median(per_call[True]) - statistics.median(per_call[False])
    print(f"cost of statistics: {cost:.2f} us per call")
    for comm in comms.values():
        comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
