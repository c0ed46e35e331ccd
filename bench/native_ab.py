"""Two builds of the board's native calls in one launch, taking turns every 15 calls: the
comparison that this machine's swings from launch to launch (2-4x for both ringcomm and
MPI at 1 MiB) do not drown.

    python bench/native_ab.py --extract 5adb320 /tmp/ab     # once: that revision's native/
    ringcomm-run -n 2 python bench/native_ab.py --old /tmp/ab --ops all_reduce,broadcast \\
        --sizes 64K,256K,1M --offset 16

``--extract`` writes the revision's ``native/`` as the package ``oldnative`` under the
folder and compiles its board (minutes; numba caches it there). A run then points the
board's native calls (``piece``, ``pieces``) at the old build and back, round after round,
on the same buffers: each ``--offset`` bytes into a page (16: where malloc puts a large
numpy array; 0: page-aligned). Each round's figure is the slowest rank's median of 15
calls, microseconds; the table gives the median over rounds and the range of the per-round
ratios old / new.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
from collectives import parse_size

import ringcomm
import ringcomm.transport.shm.board as shm_board
from ringcomm.native import board as new_board

PAGE = 4096


def extract(revision: str, folder: Path) -> None:
    """``native/`` at ``revision`` as ``folder/oldnative``, its board compiled."""
    package = folder / "oldnative"
    package.mkdir(parents=True, exist_ok=True)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout  # fmt: skip

    for path in git("ls-tree", "--name-only", f"{revision}:native").split():
        if path.endswith(".py"):
            (package / path).write_text(git("show", f"{revision}:native/{path}"))
    load_old(folder).warm_cache()


def load_old(folder: Path) -> ModuleType:
    """The board of the build that ``--extract`` wrote under ``folder``."""
    sys.path.insert(0, str(folder))
    return importlib.import_module("oldnative.board")


def _at(nbytes: int, offset: int) -> np.ndarray:
    """``nbytes`` as float32, ``offset`` bytes into a page."""
    raw = np.empty(nbytes + 2 * PAGE, np.uint8)
    start = -raw.ctypes.data % PAGE + offset
    return raw[start : start + nbytes].view(np.float32)


def _call(comm: ringcomm.Communicator, op: str, nbytes: int, offset: int) -> Callable[[], object]:
    """One ``op`` of ``nbytes`` (the larger buffer) on buffers ``offset`` into a page."""
    big, small = _at(nbytes, offset), _at(nbytes // comm.size, offset)
    big[:], small[:] = comm.rank + 1, comm.rank + 1
    if op == "all_gather":
        return lambda: comm.all_gather(big, small)
    if op == "reduce_scatter":
        return lambda: comm.reduce_scatter(small, big)
    if op == "all_to_all":
        out = _at(nbytes, offset)
        return lambda: comm.all_to_all(out, big)
    if op == "broadcast":
        return lambda: comm.broadcast(big, root=0)
    return lambda: comm.all_reduce(big)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extract", nargs=2, metavar=("REVISION", "FOLDER"))
    parser.add_argument("--old", type=Path, help="a folder --extract wrote")
    parser.add_argument("--ops", default="all_reduce,all_gather,reduce_scatter,broadcast")
    parser.add_argument("--sizes", default="64K,256K,1M,4M", help="the larger buffer's bytes")
    parser.add_argument("--offset", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    if args.extract:
        extract(args.extract[0], Path(args.extract[1]))
        return 0
    if args.old is None:
        parser.error("--old FOLDER (or --extract REVISION FOLDER first)")
    old_board = load_old(args.old)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    ops = args.ops.split(",")
    times: dict[tuple[str, int, str], list[float]] = {}
    with ringcomm.init() as comm:
        for op in ops:
            for nbytes in sizes:
                call = _call(comm, op, nbytes, args.offset)
                for _ in range(args.rounds):
                    for build, module in (("old", old_board), ("new", new_board)):
                        shm_board._piece, shm_board._pieces = module.piece, module.pieces
                        call()
                        took = []
                        for _ in range(15):
                            start = time.perf_counter()
                            call()
                            took.append(time.perf_counter() - start)
                        median = np.array([statistics.median(took) * 1e6])
                        comm.all_reduce(median, op=ringcomm.MAX)
                        times.setdefault((op, nbytes, build), []).append(float(median[0]))
        shm_board._piece, shm_board._pieces = new_board.piece, new_board.pieces
        if comm.rank == 0:
            print(f"# n={comm.size}, buffers {args.offset} bytes into a page: old | new, us")
            for op in ops:
                for nbytes in sizes:
                    old, new = times[op, nbytes, "old"], times[op, nbytes, "new"]
                    ratios = [a / b for a, b in zip(old, new, strict=True)]
                    print(
                        f"{op:15s} {nbytes:>9} {statistics.median(old):9.1f} | "
                        f"{statistics.median(new):9.1f}  ({min(ratios):.2f}-{max(ratios):.2f})"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
