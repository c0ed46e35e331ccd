"""Tensor fusion: many small all_reduces as one ``group()``, against the same tensors
reduced one call at a time and against gloo's ``all_reduce_coalesced``, in one launch.

    ringcomm-run -n 2 python bench/fusion.py [--tensors 200] [--min-kib 1] [--max-kib 64]

The tensors are float32, of sizes drawn (seeded) between the bounds. Configurations take
turns for ``--rounds`` rounds; each figure is the median over rounds of the median of
``--iters`` timed iterations, as the slowest rank saw it, a barrier before each iteration.
Every configuration's result is checked once against the expected sum.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from collectives import init_gloo

import ringcomm


def sizes(args: argparse.Namespace) -> list[int]:
    """Element counts of the tensors (the same on every rank)."""
    rng = np.random.default_rng(7)
    kib = rng.integers(args.min_kib, args.max_kib + 1, args.tensors)
    return [int(k) * 1024 // 4 for k in kib]


def configurations(
    comm: ringcomm.Communicator, arrays: list[np.ndarray], gloo: bool
) -> dict[str, Callable[[], None]]:
    """What each configuration does once, on ``arrays`` (its own copies for gloo)."""

    def separate() -> None:
        for a in arrays:
            comm.all_reduce(a)

    def separate_async() -> None:
        works = [comm.all_reduce(a, async_op=True) for a in arrays]
        for w in works:
            assert w is not None
            w.wait()

    def grouped() -> None:
        with comm.group():
            for a in arrays:
                comm.all_reduce(a)

    configs = {"separate": separate, "separate-async": separate_async, "group": grouped}
    if gloo:
        import torch
        import torch.distributed as dist

        tensors = [torch.from_numpy(a) for a in arrays]  # the same memory
        configs["gloo-coalesced"] = lambda: dist.all_reduce_coalesced(tensors)
    return configs


def timed(comm: ringcomm.Communicator, run: Callable[[], None], iters: int) -> float:
    """Median seconds of ``run`` over ``iters`` iterations, the slowest rank's."""
    times = []
    for _ in range(iters):
        comm.barrier()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    mine = np.array([statistics.median(times)])
    comm.all_reduce(mine, ringcomm.MAX)
    return float(mine[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tensors", type=int, default=200)
    p.add_argument("--min-kib", type=int, default=1)
    p.add_argument("--max-kib", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-gloo", action="store_true")
    args = p.parse_args()
    comm = ringcomm.init()
    n, r = comm.size, comm.rank
    if not args.no_gloo:
        init_gloo(comm)
    counts = sizes(args)
    arrays = [np.full(c, r + 1, np.float32) for c in counts]
    configs = configurations(comm, arrays, not args.no_gloo)
    want = n * (n + 1) / 2
    for name, run in configs.items():  # check each once, then warm up
        for a in arrays:
            a.fill(r + 1)
        run()
        bad = sum(int((a != want).sum()) for a in arrays)
        if bad:
            raise SystemExit(f"rank {r}: {name} left {bad} wrong elements")
        run()
    results: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, run in configs.items():
            results[name].append(timed(comm, run, args.iters))
    if r == 0:
        total = sum(counts) * 4
        print(
            f"# {args.tensors} float32 tensors of {args.min_kib}-{args.max_kib} KiB "
            f"({total / 2**20:.2f} MiB), {n} ranks, transport {comm.transport}, fusion "
            f"threshold {ringcomm.Config.from_env().fusion_bytes >> 10} KiB; median of "
            f"{args.rounds} rounds x {args.iters} iterations, slowest rank"
        )
        print(f"# {'config':<16}{'ms':>9}{'vs group':>10}")
        group = statistics.median(results["group"])
        for name, times in results.items():
            t = statistics.median(times)
            print(f"  {name:<16}{t * 1e3:9.3f}{t / group:10.2f}")
    if not args.no_gloo:
        import torch.distributed as dist

        dist.destroy_process_group()
    comm.close()


if __name__ == "__main__":
    main()
