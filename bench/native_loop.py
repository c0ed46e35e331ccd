"""The board's protocol with no Python per operation: each rank runs N broadcasts (or
all_reduces) of the piece a blocking call would take, in one numba loop around the board's
native ``piece``, and then the same N from Python (``comm.broadcast``). What the first
takes is the floor of the native protocol on this machine (cache-line hand-offs, copies,
system calls); the difference is what the Python path costs per call.

    ringcomm-run -n 2 python bench/native_loop.py                  # broadcast, 4K..256K
    ringcomm-run -n 2 python bench/native_loop.py --op all_reduce --sizes 4K,64K

Only where the board runs native pieces (the shared-memory transport's default). The loop
returns to Python where a peer sleeps (to wake it), so the ranks keep pace; the first
call of the loop, which compiles it, is not timed.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
from collectives import parse_size
from numba import njit

import ringcomm
from ringcomm.algorithms import direct
from ringcomm.native import board as nb

_RETRY = nb.BLOCKED | nb.NOT_READY | nb.NOT_DONE | nb.NOT_REDUCED


@njit
def _loop(table, a, kind, k0, n, size_word, op, steps, spins):  # type: ignore[no-untyped-def]
    """Pieces k0 .. k0 + n - 1, each until it took every step. Returns (pieces done,
    -1 where one failed): it returns early after a piece that found a peer asleep."""
    for i in range(n):
        while True:
            status = nb.piece(table, a, a, kind, k0 + i, size_word, op, 0, steps, spins)
            if status & (nb.MISMATCH | nb.UNREAD):
                return i, -1
            if not status & _RETRY:
                break
        if status & nb.WAKE:
            return i + 1, 0
    return n, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", choices=("broadcast", "all_reduce"), default="broadcast")
    parser.add_argument("--sizes", default="4K,16K,64K,256K")
    parser.add_argument("-n", "--iters", type=int, default=100_000)
    args = parser.parse_args()
    comm = ringcomm.init()
    for nbytes in (parse_size(s) for s in args.sizes.split(",")):
        a = np.ones(nbytes // 4, np.float32)
        if args.op == "broadcast":
            call = functools.partial(comm.broadcast, a, 0)
        else:
            call = functools.partial(comm.all_reduce, a)
        for _ in range(100):
            call()
        b = comm._transport.board  # type: ignore[attr-defined]
        if b is None or b.table is None:
            raise SystemExit("no board with native pieces here")
        if args.op == "broadcast":
            kind, steps = direct.broadcast_piece(b, a, 0, False)
        else:
            kind, steps = direct.allreduce_piece(b, a, int(ringcomm.SUM), False)
        steps &= ~nb.IN_PIECES
        if nbytes > b.piece_bytes or not steps:
            raise SystemExit(f"{nbytes} bytes: not one native piece here")
        op = int(ringcomm.SUM)
        _loop(b.table, a, kind, b.count + 1, 0, nbytes, op, steps, b._spins)  # compile
        comm.barrier()
        done, t0 = 0, time.perf_counter()
        while done < args.iters:
            went, failed = _loop(
                b.table, a, kind, b.count + 1, args.iters - done, nbytes, op, steps, b._spins
            )
            b.count += went
            done += went
            if failed:
                raise SystemExit(f"rank {comm.rank}: piece {b.count + 1} failed")
            b.wake_peers()
        native_us = (time.perf_counter() - t0) / args.iters * 1e6
        comm.barrier()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            call()
        python_us = (time.perf_counter() - t0) / args.iters * 1e6
        if comm.rank == 0:
            print(
                f"{args.op} {nbytes:>8} B, n={comm.size}: native loop {native_us:6.2f} us, "
                f"from Python {python_us:6.2f} us a call",
                flush=True,
            )
    comm.close()


if __name__ == "__main__":
    main()
