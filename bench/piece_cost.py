"""The board's native call on its own: two ranks played in one thread (rank 0 publishes,
rank 1 publishes and finishes, rank 0 finishes), on tables whose counters and areas are
plain arrays. No scheduling, no waiting, no Python around the call: what a change to
``native/board.py`` costs or saves per call, below the noise of a launch.

    python bench/native_ab.py --extract HEAD /tmp/ab     # once: that revision's native/
    python bench/piece_cost.py --old /tmp/ab --sizes 4K,64K

With ``--old``, each round times the old build, then this one (numba's cache for each);
the table gives each build's median over rounds (the first round left out: warm-up) and
its fastest round, microseconds per operation (three calls).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from collectives import parse_size
from native_ab import load_old

from ringcomm.native import board as new_board

AREA = 1 << 24  # each of a rank's two areas: the largest size taken
# The counter words, as a board's (SIZE and ADDRESS: two each, by the piece's parity).
READY, SIZE, DONE, ADDRESS, REDUCED, WORDS = 1, 2, 4, 6, 8, 512


def _tables(b: ModuleType) -> tuple[list[np.ndarray], tuple[object, ...]]:
    """Two ranks' tables over the same counters and areas (and what must stay alive)."""
    words = [np.zeros(WORDS, np.uint64) for _ in range(2)]
    for w in words:  # as if pieces 1 and 2 were done: piece 3 may publish at once
        w[DONE] = w[REDUCED] = 2
    areas = [np.zeros(2 * AREA, np.uint8) for _ in range(2)]
    scratch = np.zeros(1 << 16, np.uint8)
    tables = []
    for rank in range(2):
        t = np.zeros(b.FIRST + 2 * b.FIELDS, np.uint64)
        t[b.H_SIZE], t[b.H_RANK], t[b.H_READY], t[b.H_SIZE_WORD] = 2, rank, READY, SIZE
        t[b.H_DONE], t[b.H_COUNTER_WORDS], t[b.H_ADDRESS] = DONE, WORDS, ADDRESS
        t[b.H_REDUCED] = REDUCED
        t[b.H_SCRATCH], t[b.H_SCRATCH_BYTES] = scratch.ctypes.data, scratch.nbytes
        for r in range(2):
            at = b.FIRST + b.FIELDS * r
            t[at + b.F_COUNTERS] = words[r].ctypes.data
            t[at + b.F_AREA0] = areas[r].ctypes.data
            t[at + b.F_AREA1] = areas[r].ctypes.data + AREA
        tables.append(t)
    return tables, (words, areas, scratch)


def _buffers(b: ModuleType, kind: int, nbytes: int) -> tuple[list, list]:
    """Each rank's input and output for ``kind`` (``nbytes``: the larger of the two)."""
    count = nbytes // 4
    src = [np.ones(count // 2 if kind == b.ALL_GATHER else count, np.float32) for _ in range(2)]
    if kind == b.BROADCAST:
        return src, src
    out = count // 2 if kind == b.REDUCE_SCATTER else count
    return src, [np.empty(out, np.float32) for _ in range(2)]


def time_build(b: ModuleType, op: str, nbytes: int, calls: int) -> float:
    """Microseconds per operation of ``op`` on ``nbytes`` with build ``b``."""
    kind = getattr(b, op.upper())
    tables, _alive = _tables(b)  # (the tables hold raw addresses into these)
    src, dst = _buffers(b, kind, nbytes)
    root = 0 if kind == b.BROADCAST else -1
    publish, finish = b.PUBLISH | b.COPY, b.FINISH
    want = (b.PUBLISHED, b.PUBLISHED | b.FINISHED, b.FINISHED)
    k = 2
    start = time.perf_counter()
    for _ in range(calls):
        k += 1
        said = (
            b.piece(tables[0], src[0], dst[0], kind, k, src[0].nbytes, b.SUM, root, publish, 0),
            b.piece(tables[1], src[1], dst[1], kind, k, src[1].nbytes, b.SUM, root,
                    publish | finish, 0),
            b.piece(tables[0], src[0], dst[0], kind, k, src[0].nbytes, b.SUM, root, finish, 0),
        )  # fmt: skip
        if said != want:
            raise SystemExit(f"{op} {nbytes}: piece said {said}, not {want}")
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="a folder bench/native_ab.py --extract wrote")
    parser.add_argument("--ops", default="all_reduce,all_gather,reduce_scatter,broadcast")
    parser.add_argument("--sizes", default="4K,64K")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    builds = {"new": new_board}
    if args.old:
        builds = {"old": load_old(args.old), **builds}
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if max(sizes) > AREA:
        raise SystemExit(f"sizes up to {AREA} bytes")
    print("# us per operation (3 native calls): " + " | ".join(
        f"{name} median (fastest)" for name in builds))  # fmt: skip
    for op in args.ops.split(","):
        for nbytes in sizes:
            calls = max(50, (1 << 24) // nbytes)
            times: dict[str, list[float]] = {name: [] for name in builds}
            for _ in range(args.rounds):
                for name, b in builds.items():
                    times[name].append(time_build(b, op, nbytes, calls))
            row = " | ".join(
                f"{statistics.median(t[1:] or t):8.3f} ({min(t):.3f})" for t in times.values()
            )
            print(f"{op:<16}{nbytes:>10}  {row}")


if __name__ == "__main__":
    main()
