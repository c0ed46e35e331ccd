"""What a copy costs by where its destination lies from its source: libc's memcpy (numpy's
``copyto``) against the board's native copy (``ringcomm.native.board._copy``).

    python bench/copy_alignment.py                 # 16 KiB to 4 MiB, four distances

The distance is ``(dst - src) mod 4096``. A page-aligned area copied into a malloc'ed
numpy array (16 bytes into its page) is 16 apart. On some CPUs (AMD Zen 3 here) glibc's
``rep movsb``, which it takes from about 2 KiB, runs an order of magnitude slower at such
distances; ``GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=<huge>`` turns it off to
compare. Microseconds a copy, the best of five rounds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numba
import numpy as np
from collectives import parse_size

from ringcomm.native import board as native_board

PAGE = 4096


@numba.njit(cache=True)
def _board_copy(dst: np.ndarray, src: np.ndarray) -> None:
    native_board._copy(dst, src)


def _best(
    copy: Callable[[np.ndarray, np.ndarray], None], dst: np.ndarray, src: np.ndarray
) -> float:
    copy(dst, src)
    reps = max(3, (64 << 20) // src.nbytes)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            copy(dst, src)
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e6


def _at(raw: np.ndarray, address: int, nbytes: int) -> np.ndarray:
    """``nbytes`` of ``raw`` from the first byte at ``address`` modulo a page."""
    start = (address - raw.ctypes.data) % PAGE
    return raw[start : start + nbytes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16K,64K,256K,1M,4M")
    parser.add_argument("--distances", default="0,16,64,2048")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    distances = [int(d) for d in args.distances.split(",")]
    print("# us a copy: memcpy (numpy) / board copy, by (dst - src) mod 4096")
    print(f"{'bytes':>9} " + " ".join(f"{f'd={d}':>17}" for d in distances))
    for nbytes in sizes:
        source = np.empty(nbytes + PAGE, np.uint8)
        src = _at(source, 0, nbytes)
        src[:] = np.arange(nbytes, dtype=np.uint64).astype(np.uint8)
        target = np.empty(nbytes + PAGE, np.uint8)
        row = []
        for d in distances:
            dst = _at(target, src.ctypes.data + d, nbytes)
            mem, board = _best(np.copyto, dst, src), _best(_board_copy, dst, src)
            assert np.array_equal(dst, src)
            row.append(f"{mem:8.1f} /{board:7.1f}")
        print(f"{nbytes:>9} " + " ".join(f"{r:>17}" for r in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
