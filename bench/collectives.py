"""nccl-tests style benchmark of ringcomm's collectives, with its peers beside it in one launch.

    ringcomm-run -n 4 python bench/collectives.py all_reduce -b 4K -e 64M -f 4 --peer gloo
    mpiexec -n 4 python bench/collectives.py all_reduce -b 4K -e 64M -f 4 --peer mpi,zmq,gloo

Columns, as nccl-tests prints them (whitespace-separated, so scripts written for nccl-tests
read them): size (bytes; for all_gather/reduce_scatter/all_to_all the whole gathered or
scattered buffer), count (elements), type, redop, root (-1 when the op has none), then an
out-of-place and an in-place group of time (us), algbw = size / time, busbw = algbw * factor
(GB/s) and #wrong (elements that differ from the expected result in the checked runs, summed
over ranks; N/A with ``-c 0``). Then ringcomm's own columns: bound (busbw of the op's natural
form as a fraction of the memory-copy bandwidth each rank gets with all ranks copying at once,
measured at start: how far from the hardware a size is) and extraMiB (peak resident memory
above the buffers during the timed loop, max over ranks). busbw factors: all_reduce
2(n-1)/n; all_gather, reduce_scatter, all_to_all (n-1)/n; broadcast, reduce 1.

Out-of-place and in-place. all_gather and reduce_scatter take a separate output, or one that
is this rank's slot of the input (in place). all_reduce, broadcast and reduce work in place
only; their out-of-place form is what a caller with separate buffers does: copy the input into
the output, then run in place (the copy is timed). all_to_all has no in-place form (N/A).

``--barrier`` puts an untimed barrier before every timed iteration, so ranks enter each
operation together from a wait (as between phases of compute) instead of back to back.

Time: each rank takes the median over its timed iterations (an iteration of ``-m K`` runs K
operations and counts for its time / K); ``-a`` combines the ranks' medians: 0 rank 0's,
1 the average, 2 the fastest, 3 the slowest (the default). The header names the statistic.

``--peer`` adds, per row, the same op on the same sizes by (comma-separated): ``gloo``
(torch.distributed, torch.set_num_threads(1): its fastest setting here), ``mpi`` (mpi4py's
Allreduce / Allgather / Reduce_scatter_block / Bcast / Reduce / Alltoall; needs an MPI
launch; timed for every size before ringcomm initialises, because ringcomm in the process
slows MPI), ``zmq`` (ringcomm itself over ZeroMQ sockets, beside a run over another transport).
Peers run the op's natural form (in place for all_reduce, broadcast and reduce, out of place
for the others); each gets time, busbw, #wrong and the ratio of ringcomm's busbw in the same
form to the peer's.

The trailer has the lines scripts grep nccl-tests output for: ``# Out of bounds values : N
OK|FAILED`` (ringcomm's wrong elements over every row and both groups) and ``# Avg bus
bandwidth    : X`` (the mean of ringcomm's busbw over every row and group). The exit status
is 1 when a value was wrong. ``--json FILE`` appends one JSON line per row (read by
bench/plot.py); ``--csv FILE`` appends one CSV row per size (the header when the file is new).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import ringcomm

PEERS = ("gloo", "mpi", "zmq")
OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "all_to_all")
ROOTED = ("broadcast", "reduce")
REDUCING = ("all_reduce", "reduce_scatter", "reduce")
# Ops whose only form in ringcomm's API (and the form the peers run) is in place.
IN_PLACE_NATURAL = ("all_reduce", "broadcast", "reduce")
REDOPS = {
    "sum": ringcomm.SUM,
    "prod": ringcomm.PROD,
    "min": ringcomm.MIN,
    "max": ringcomm.MAX,
    "avg": ringcomm.AVG,
}
# -a: how the ranks' medians become one figure (the codes nccl-tests uses).
AVERAGES = {
    0: "rank 0's",
    1: "the average over ranks",
    2: "the fastest rank",
    3: "the slowest rank",
}
MEMCPY_BYTES = 64 << 20  # larger than the last-level caches: the bound is memory's, not cache's

Waiter = Callable[[], Any] | None  # finishes an operation issued without blocking


def parse_size(text: str) -> int:
    """'4K' -> 4096, '64M' -> 67108864, '1G', or plain bytes."""
    m = re.fullmatch(r"(\d+)([KMG]?)B?", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 4K, 64M)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' busbw factor: what each rank's link must carry relative to algbw."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    return 1.0


def _memory_kib() -> tuple[int, int]:
    """(current, peak) resident memory of this process in KiB (Linux)."""
    cur = peak = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return cur, peak


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def sentinel(dtype: np.dtype) -> Any:
    """A value no expected result holds (they are small non-negative numbers): NaN for
    floats, the largest value for integers."""
    if np.issubdtype(dtype, np.floating):
        return np.nan
    return np.iinfo(dtype).max


class Case:
    """Buffers and expected result of one op, at one size, in one form, on one rank.

    ``inp`` is what the op reads and ``out`` what it writes (the same array, or overlapping,
    in place); ``contribution`` is this rank's input as it was at the start.
    """

    def __init__(
        self,
        op: str,
        nbytes: int,
        dtype: np.dtype,
        rank: int,
        n: int,
        redop: str,
        *,
        root: int = 0,
        in_place: bool = False,
    ):
        self.op, self.rank, self.n, self.redop, self.root = op, rank, n, redop, root
        self.in_place = in_place
        per_rank = op in ("all_gather", "reduce_scatter", "all_to_all")
        count = max(nbytes // dtype.itemsize, n if per_rank else 1)
        if per_rank:
            count -= count % n
        self.count = count
        self.nbytes = count * dtype.itemsize
        self.small = small = count // n if per_rank else count
        base = (np.arange(count) % 7).astype(dtype)
        mine = slice(rank * small, (rank + 1) * small)
        if op == "broadcast":
            self.contribution = base + 1 if rank == root else np.zeros(count, dtype)
        elif op == "all_gather":
            self.contribution = (base[:small] + rank).astype(dtype)
        else:
            self.contribution = (base + rank).astype(dtype)
        if not in_place:
            self.inp = self.contribution.copy()
            self.out = np.zeros(small if op == "reduce_scatter" else count, dtype)
        elif op == "all_gather":
            self.out = np.zeros(count, dtype)
            self.inp = self.out[mine]
            self.inp[:] = self.contribution
        elif op == "reduce_scatter":
            self.inp = self.contribution.copy()
            self.out = self.inp[mine]
        elif op == "all_to_all":
            raise ValueError("all_to_all has no in-place form")
        else:  # all_reduce, broadcast, reduce: one buffer
            self.inp = self.out = self.contribution.copy()

    def reset(self) -> None:
        """Before a checked run: inputs as at the start, every other output element set to a
        value no correct result holds, so a run that writes nothing counts as wrong."""
        self.out[:] = sentinel(self.out.dtype)
        if self.op == "broadcast" and self.rank != self.root:
            return  # it receives every element
        if self.in_place or self.op in IN_PLACE_NATURAL:
            self.inp[:] = self.contribution  # (out of place, the run copies it into out)

    def expected(self) -> np.ndarray:
        n, base = self.n, (np.arange(self.count) % 7).astype(np.float64)
        ranks = np.arange(n, dtype=np.float64)
        combine = {"sum": np.sum, "avg": np.mean, "max": np.max, "min": np.min, "prod": np.prod}
        reduced = combine[self.redop](base[None, :] + ranks[:, None], axis=0)
        if self.op == "all_reduce" or (self.op == "reduce" and self.rank == self.root):
            return reduced
        if self.op == "reduce":
            return self.contribution  # non-root buffers are left as they were
        if self.op == "broadcast":
            return base + 1
        small = self.small
        if self.op == "all_gather":
            return np.concatenate([base[:small] + r for r in range(n)])
        if self.op == "reduce_scatter":
            return reduced[self.rank * small : (self.rank + 1) * small]
        return np.concatenate(
            [base[self.rank * small : (self.rank + 1) * small] + s for s in range(n)]
        )

    def wrong(self) -> int:
        want = self.expected()
        return int(np.count_nonzero(~np.isclose(self.out.astype(np.float64), want, rtol=1e-5)))


def ringcomm_runner(
    comm: ringcomm.Communicator, case: Case, args: argparse.Namespace
) -> Callable[[], Waiter]:
    """Issue one operation of ``case`` on ``comm``; return what finishes it (None when it
    ran blocking, ``-z 1``)."""
    op, redop, root, inp, out = case.op, REDOPS[args.redop], case.root, case.inp, case.out
    nonblocking = not args.blocking
    call: Callable[[], ringcomm.Work | None]
    if op == "all_reduce":
        call = lambda: comm.all_reduce(  # noqa: E731
            out, redop, algorithm=args.algorithm, async_op=nonblocking
        )
    elif op == "all_gather":
        call = lambda: comm.all_gather(out, inp, async_op=nonblocking)  # noqa: E731
    elif op == "reduce_scatter":
        call = lambda: comm.reduce_scatter(out, inp, redop, async_op=nonblocking)  # noqa: E731
    elif op == "broadcast":
        call = lambda: comm.broadcast(  # noqa: E731
            out, root, algorithm=args.broadcast_algorithm, async_op=nonblocking
        )
    elif op == "reduce":
        call = lambda: comm.reduce(out, root, redop, async_op=nonblocking)  # noqa: E731
    else:
        call = lambda: comm.all_to_all(out, inp, async_op=nonblocking)  # noqa: E731
    if case.in_place or op not in IN_PLACE_NATURAL:
        return lambda: _waiter(call())
    copies = op != "broadcast" or case.rank == root
    pending: list[ringcomm.Work | None] = [None]

    def copy_then_call() -> Waiter:
        # The caller's copy into the output must not overtake the previous operation on it.
        if pending[0] is not None:
            pending[0].wait()
        if copies:
            np.copyto(out, inp)
        pending[0] = call()
        return _waiter(pending[0])

    return copy_then_call


def _waiter(work: Any) -> Waiter:
    return work.wait if work is not None else None


def gloo_runner(case: Case, args: argparse.Namespace) -> Callable[[], Waiter] | None:
    import torch
    import torch.distributed as dist

    redop = {
        "sum": dist.ReduceOp.SUM,
        "prod": dist.ReduceOp.PRODUCT,
        "min": dist.ReduceOp.MIN,
        "max": dist.ReduceOp.MAX,
        "avg": dist.ReduceOp.AVG,
    }[args.redop]
    out, inp = torch.from_numpy(case.out), torch.from_numpy(case.inp)
    op, root, nonblocking = case.op, case.root, not args.blocking
    if op == "all_reduce":
        if args.redop == "avg":
            return None  # gloo has no AVG
        return lambda: _waiter(dist.all_reduce(out, redop, async_op=nonblocking))
    # torch 2.13 renamed these (the old names warn); older torch has the old names only
    all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
    reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
    if op == "all_gather":
        return lambda: _waiter(all_gather(out, inp, async_op=nonblocking))
    if op == "reduce_scatter":
        return lambda: _waiter(reduce_scatter(out, inp, redop, async_op=nonblocking))
    if op == "broadcast":
        return lambda: _waiter(dist.broadcast(out, root, async_op=nonblocking))
    if op == "reduce":
        return lambda: _waiter(dist.reduce(out, root, redop, async_op=nonblocking))
    return lambda: _waiter(dist.all_to_all_single(out, inp, async_op=nonblocking))


def mpi_runner(case: Case, args: argparse.Namespace) -> Callable[[], Waiter] | None:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    redop = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX}.get(args.redop)
    if redop is None and case.op in ("all_reduce", "reduce_scatter", "reduce"):
        return None  # MPI has no AVG
    out, inp, op, root = case.out, case.inp, case.op, case.root
    calls: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        # op: (blocking, nonblocking returning a request)
        "all_reduce": (
            lambda: world.Allreduce(MPI.IN_PLACE, out, redop),
            lambda: world.Iallreduce(MPI.IN_PLACE, out, redop),
        ),
        "all_gather": (lambda: world.Allgather(inp, out), lambda: world.Iallgather(inp, out)),
        "reduce_scatter": (
            lambda: world.Reduce_scatter_block(inp, out, redop),
            lambda: world.Ireduce_scatter_block(inp, out, redop),
        ),
        "broadcast": (lambda: world.Bcast(out, root), lambda: world.Ibcast(out, root)),
        "all_to_all": (lambda: world.Alltoall(inp, out), lambda: world.Ialltoall(inp, out)),
    }
    if world.Get_rank() == root:
        calls["reduce"] = (
            lambda: world.Reduce(MPI.IN_PLACE, out, redop, root),
            lambda: world.Ireduce(MPI.IN_PLACE, out, redop, root),
        )
    else:
        calls["reduce"] = (
            lambda: world.Reduce(out, None, redop, root),
            lambda: world.Ireduce(out, None, redop, root),
        )
    blocking, nonblocking = calls[op]

    def issue() -> Waiter:
        if args.blocking:
            blocking()
            return None
        return nonblocking().Wait

    return issue


def new_port(comm: ringcomm.Communicator) -> int:
    """A port free on rank 0, for another world beside ``comm``'s (its own store's port may
    not be free again yet)."""
    from ringcomm.run import free_port

    port = np.array([free_port() if comm.rank == 0 else 0], np.int64)
    comm.broadcast(port, 0)
    return int(port[0])


def init_gloo(comm: ringcomm.Communicator) -> None:
    """torch.distributed's gloo on a port rank 0 picked (works under any launcher)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group(
        "gloo", init_method=f"tcp://{host}:{new_port(comm)}", rank=comm.rank, world_size=comm.size
    )


class Peer:
    """One side-by-side peer: how it runs a case and how it synchronises."""

    def __init__(self, name: str, comm: ringcomm.Communicator, args: argparse.Namespace):
        self.name = name
        self.comm: ringcomm.Communicator | None = None
        if name == "gloo":
            import torch.distributed as dist

            init_gloo(comm)
            self.barrier: Callable[[], None] = dist.barrier
        elif name == "mpi":
            from mpi4py import MPI

            self.barrier = MPI.COMM_WORLD.Barrier
        elif comm.transport != "mpi" and "MASTER_PORT" in os.environ:
            # ringcomm over another transport, a second world through a store of its own
            self.comm = ringcomm.init(transport=name, master_port=new_port(comm))
            self.barrier = self.comm.barrier
        else:  # ... or formed over MPI, under an MPI launch
            self.comm = ringcomm.init(transport=name)
            self.barrier = self.comm.barrier

    def runner(self, case: Case, args: argparse.Namespace) -> Callable[[], Waiter] | None:
        if self.name == "gloo":
            return gloo_runner(case, args)
        if self.name == "mpi":
            return mpi_runner(case, args)
        assert self.comm is not None
        return ringcomm_runner(self.comm, case, args)

    def close(self) -> None:
        if self.name == "gloo":
            import torch.distributed as dist

            dist.destroy_process_group()
        elif self.comm is not None:
            self.comm.close()


class MpiWorld:
    """What :func:`measure` asks of a communicator, over mpi4py: the MPI peer is timed
    before ringcomm initialises, since ringcomm slows MPI in its own process (see
    bench/side_effects.py)."""

    def __init__(self) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self._world = MPI.COMM_WORLD
        self.rank, self.size = self._world.Get_rank(), self._world.Get_size()

    def broadcast(self, a: np.ndarray, root: int) -> None:
        self._world.Bcast(a, root)

    def all_reduce(self, a: np.ndarray, op: ringcomm.ReduceOp) -> None:
        mpi = self._mpi
        mpi_op = {ringcomm.MIN: mpi.MIN, ringcomm.MAX: mpi.MAX}.get(op, mpi.SUM)
        self._world.Allreduce(mpi.IN_PLACE, a, mpi_op)
        if op == ringcomm.AVG:
            a /= self.size

    def barrier(self) -> None:
        self._world.Barrier()


def measure_mpi_untouched(args: argparse.Namespace, sizes: list[int]) -> dict[int, Any]:
    """The MPI peer's figures for every size, taken before ringcomm initialises."""
    world = MpiWorld()
    dtype = np.dtype(args.dtype)
    results: dict[int, Any] = {}
    for size in sizes:
        pcase = Case(
            args.op, size, dtype, world.rank, world.size, args.redop,
            root=args.root, in_place=args.op in IN_PLACE_NATURAL,
        )  # fmt: skip
        prun = mpi_runner(pcase, args)
        results[size] = None if prun is None else measure(world, prun, pcase, args, world.barrier)
    return results


def combine(comm: Any, value: float, average: int) -> float:
    """One figure from every rank's ``value``, as ``-a`` says."""
    v = np.array([value], np.float64)
    if average == 0:
        comm.broadcast(v, 0)
    elif average == 1:
        comm.all_reduce(v, ringcomm.AVG)
    else:
        comm.all_reduce(v, ringcomm.MIN if average == 2 else ringcomm.MAX)
    return float(v[0])


def measure(
    comm: Any,
    issue: Callable[[], Waiter],
    case: Case,
    args: argparse.Namespace,
    barrier: Callable[[], None],
) -> dict[str, Any]:
    """Time ``issue`` on ``case``; return time_us (as ``-a`` combines the ranks' medians),
    wrong (summed over ranks, None without checks) and extra_mib (max over ranks). ``comm``
    combines the ranks' figures (a ringcomm communicator, or :class:`MpiWorld`)."""

    def run_once() -> None:
        waiters = [issue() for _ in range(args.agg)]
        for w in waiters:
            if w is not None:
                w()

    def checked() -> int:  # one operation: in place, a second would reduce the result again
        case.reset()
        waiter = issue()
        if waiter is not None:
            waiter()
        return case.wrong()

    for _ in range(args.warmup):
        run_once()
    barrier()
    base_rss, _ = _memory_kib()
    _reset_peak()
    times, wrong, checks, peak = [], 0, 0, 0
    for it in range(1, args.iters + 1):
        if args.barrier:
            barrier()  # untimed: every rank enters the operation at once, from a wait
        t0 = time.perf_counter()
        run_once()
        times.append((time.perf_counter() - t0) / args.agg)
        if args.check and it % args.check == 0:
            peak = max(peak, _memory_kib()[1])  # the check's own arrays do not count
            wrong, checks = wrong + checked(), checks + 1
            _reset_peak()
    peak = max(peak, _memory_kib()[1])
    if args.check and checks == 0:
        wrong = checked()  # -c above -n: one check after the timed loop
    t = combine(comm, float(np.median(times)), args.average)
    tallies = np.array([wrong, max(0, peak - base_rss) / 1024.0])
    summed, worst = tallies.copy(), tallies.copy()
    comm.all_reduce(summed, ringcomm.SUM)
    comm.all_reduce(worst, ringcomm.MAX)
    return {
        "time_us": t * 1e6,
        "wrong": int(summed[0]) if args.check else None,
        "extra_mib": float(worst[1]),
    }


def memcpy_gbs(comm: ringcomm.Communicator) -> float:
    """The memory-copy bandwidth each rank gets while every rank copies at once (GB/s of
    bytes copied, the least over ranks, best of five copies of 64 MiB)."""
    src = np.ones(MEMCPY_BYTES, np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    comm.barrier()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    v = np.array([MEMCPY_BYTES / best / 1e9])
    comm.all_reduce(v, ringcomm.MIN)
    return float(v[0])


def _group(nbytes: int, factor: float, measured: dict[str, Any] | None) -> dict[str, Any] | None:
    """time_us, algbw, busbw and wrong of one column group (None: the form does not exist)."""
    if measured is None:
        return None
    t = measured["time_us"] / 1e6
    algbw = nbytes / t / 1e9
    return {"time_us": t * 1e6, "algbw": algbw, "busbw": algbw * factor, **measured}


def _group_text(g: dict[str, Any] | None) -> str:
    if g is None:
        return f"{'N/A':>9} {'N/A':>7} {'N/A':>7} {'N/A':>6}"
    wrong = "N/A" if g["wrong"] is None else g["wrong"]
    return f"{g['time_us']:9.1f} {g['algbw']:7.3f} {g['busbw']:7.3f} {wrong:>6}"


def header(args: argparse.Namespace, comm: ringcomm.Communicator, bound: float) -> str:
    """The block above the table: the run's parameters, the statistic, the bound, columns."""
    n, peers = comm.size, args.peers
    check = (
        "off (-c 0)"
        if not args.check
        else f"every {args.check} iterations"
        if args.check <= args.iters
        else "once, after the timed loop"
    )
    lines = [
        f"# ringcomm {ringcomm.__version__} {args.op}: {n} ranks, transport {comm.transport}, "
        f"algorithm {args.algorithm or 'auto'}, peers: {', '.join(peers) or 'none'}",
        f"# minBytes {args.minbytes} maxBytes {args.maxbytes} step: {args.stepfactor}(factor) "
        f"warmup iters: {args.warmup} iters: {args.iters} agg iters: {args.agg} "
        f"validation: {check} blocking: {int(args.blocking)}",
        f"# time: the median over {args.iters} timed iterations on each rank, then "
        f"{AVERAGES[args.average]} (-a {args.average}); "
        + ("a barrier (untimed) before each" if args.barrier else "back to back"),
        f"# bound: busbw / {bound:.2f} GB/s, the memory-copy bandwidth of each rank with all "
        f"{n} copying at once",
    ]
    if peers:
        form = "in place" if args.op in IN_PLACE_NATURAL else "out of place"
        lines.append(f"# peers run {args.op} {form}; ratio = ringcomm's busbw {form} / the peer's")
    if "mpi" in peers:
        lines.append("# mpi: timed before ringcomm initialised (untouched by it), same launch")
    groups = f"# {'':>53}{'out-of-place':>20}{'in-place':>33}"
    head = (
        f"{'size':>10} {'count':>10} {'type':>8} {'redop':>5} {'root':>5} "
        f"{'time':>9} {'algbw':>7} {'busbw':>7} {'#wrong':>6} "
        f"{'time':>9} {'algbw':>7} {'busbw':>7} {'#wrong':>6} {'bound':>6} {'extraMiB':>8}"
    )
    units = (
        f"{'(B)':>10} {'(elems)':>10} {'':>8} {'':>5} {'':>5} "
        f"{'(us)':>9} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6} "
        f"{'(us)':>9} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6} {'(frac)':>6} {'(MiB)':>8}"
    )
    for p in peers:
        head += f" | {p + '_us':>9} {'busbw':>7} {'#wrong':>6} {'ratio':>5}"
        units += f" | {'(us)':>9} {'(GB/s)':>7} {'':>6} {'':>5}"
    return "\n".join([*lines, groups, "#" + head[1:], "#" + units[1:]])


def csv_fields(peers: list[str]) -> list[str]:
    """The CSV columns: one row per size, a column per figure."""
    fields = ["op", "ranks", "transport", "size", "count", "type", "redop", "root", "statistic"]
    for g in ("oop", "ip"):
        fields += [f"{g}_time_us", f"{g}_algbw", f"{g}_busbw", f"{g}_wrong"]
    fields += ["bound", "memcpy_gbs", "extra_mib"]
    for p in peers:
        fields += [f"{p}_time_us", f"{p}_busbw", f"{p}_wrong", f"{p}_ratio"]
    return fields


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    flat = {k: row[k] for k in ("op", "ranks", "transport", "size", "count", "type", "redop")}
    flat.update(root=row["root"], statistic=row["statistic"])
    for g, key in (("oop", "out_of_place"), ("ip", "in_place")):
        for f in ("time_us", "algbw", "busbw", "wrong"):
            flat[f"{g}_{f}"] = "" if row[key] is None or row[key][f] is None else row[key][f]
    flat.update(bound=row["bound"], memcpy_gbs=row["memcpy_gbs"], extra_mib=row["extra_mib"])
    for p, fig in row["peers"].items():
        for f in ("time_us", "busbw", "wrong", "ratio"):
            flat[f"{p}_{f}"] = "" if fig is None or fig[f] is None else fig[f]
    return flat


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("op", choices=OPS)
    parser.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("4K"))
    parser.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("64M"))
    parser.add_argument("-f", "--stepfactor", type=int, default=4)
    parser.add_argument("-n", "--iters", type=int, default=20, help="timed iterations")
    parser.add_argument("-w", "--warmup", type=int, default=5)
    parser.add_argument(
        "-m", "--agg", type=int, default=1, help="operations per timed iteration (default 1)"
    )
    parser.add_argument(
        "-c",
        "--check",
        type=int,
        default=None,
        help="check the result after every N timed iterations (untimed); 0: never; "
        "default: once, after the timed loop",
    )
    parser.add_argument(
        "-a",
        "--average",
        type=int,
        default=3,
        choices=sorted(AVERAGES),
        help="combine the ranks' medians: 0 rank 0, 1 average, 2 min, 3 max (default)",
    )
    parser.add_argument(
        "-z",
        "--blocking",
        type=int,
        default=1,
        choices=(0, 1),
        help="1 (default): every operation waits before the next is issued, as a plain call "
        "does; 0: the -m operations of an iteration are issued (async_op=True), then waited for",
    )
    parser.add_argument("-r", "--root", type=int, default=0, help="root of broadcast and reduce")
    parser.add_argument(
        "--barrier",
        action="store_true",
        help="a barrier (untimed) before every timed iteration: ranks enter each operation "
        "together from a wait, as between phases of compute, instead of back to back",
    )
    parser.add_argument("-d", "--dtype", default="float32")
    parser.add_argument("-o", "--redop", default="sum", choices=sorted(REDOPS))
    parser.add_argument("--algorithm", default=None, help="all_reduce algorithm to force")
    parser.add_argument("--broadcast-algorithm", default=None, help="binomial or chain")
    parser.add_argument(
        "--peer",
        default="none",
        help="comma-separated peers to run beside ringcomm: gloo, mpi, zmq (or none)",
    )
    parser.add_argument("--json", default=None, help="append one JSON line per row here")
    parser.add_argument("--csv", default=None, help="append one CSV row per size here")
    args = parser.parse_args(argv)
    if args.stepfactor < 2:
        parser.error("-f must be at least 2")
    for name in ("iters", "agg"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0 or (args.check is not None and args.check < 0):
        parser.error("-w and -c must not be negative")
    if args.check is None:
        args.check = args.iters
    args.peers = [p for p in args.peer.split(",") if p and p != "none"]
    for p in args.peers:
        if p not in PEERS:
            parser.error(f"--peer {p!r}: expected some of {', '.join(PEERS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = []
    s = args.minbytes
    while s <= args.maxbytes:
        sizes.append(s)
        s *= args.stepfactor
    untouched = measure_mpi_untouched(args, sizes) if "mpi" in args.peers else {}
    comm = ringcomm.init()
    rank, n = comm.rank, comm.size
    if not 0 <= args.root < n:
        print(f"collectives.py: -r {args.root} is not a rank of {n}", file=sys.stderr, flush=True)
        comm.close()
        return 2
    if untouched and MpiWorld().size != n:  # (a launch without mpiexec: MPI of one rank)
        print(
            f"collectives.py: --peer mpi needs an MPI launch of all {n} ranks "
            "(RINGCOMM_TRANSPORT=auto mpiexec -n N ...)",
            file=sys.stderr,
            flush=True,
        )
        comm.close()
        return 2
    dtype = np.dtype(args.dtype)
    peers = [Peer(p, comm, args) for p in args.peers]
    bound = memcpy_gbs(comm)
    root = args.root if args.op in ROOTED else -1
    redop = args.redop if args.op in REDUCING else "none"
    statistic = f"median per rank, {AVERAGES[args.average]}"
    json_out = csv_out = None
    if rank == 0:
        print(header(args, comm, bound), flush=True)
        json_out = open(args.json, "a") if args.json else None  # noqa: SIM115
        if args.csv:
            new = not os.path.exists(args.csv) or os.path.getsize(args.csv) == 0
            csv_file = open(args.csv, "a", newline="")  # noqa: SIM115
            csv_out = csv.DictWriter(csv_file, fieldnames=csv_fields(args.peers))
            if new:
                csv_out.writeheader()
    factor = bus_factor(args.op, n)
    wrong_total, busbws = 0, []
    for size in sizes:
        groups = {}
        for key, in_place in (("out_of_place", False), ("in_place", True)):
            if in_place and args.op == "all_to_all":
                groups[key] = None
                continue
            case = Case(
                args.op, size, dtype, rank, n, args.redop, root=args.root, in_place=in_place
            )
            fig = measure(comm, ringcomm_runner(comm, case, args), case, args, comm.barrier)
            groups[key] = _group(case.nbytes, factor, fig)
        natural = groups["in_place" if args.op in IN_PLACE_NATURAL else "out_of_place"]
        assert natural is not None
        row: dict[str, Any] = {
            "op": args.op,
            "ranks": n,
            "transport": comm.transport,
            "size": case.nbytes,
            "count": case.count,
            "type": args.dtype,
            "redop": redop,
            "root": root,
            "algorithm": args.algorithm or "auto",
            "statistic": statistic,
            **groups,
            # the natural form, the one peers run and plots draw
            "time_us": natural["time_us"],
            "algbw": natural["algbw"],
            "busbw": natural["busbw"],
            "wrong": natural["wrong"],
            "bound": natural["busbw"] / bound,
            "memcpy_gbs": bound,
            "extra_mib": max(g["extra_mib"] for g in groups.values() if g is not None),
            "peers": {},
        }
        for g in groups.values():
            if g is not None:
                busbws.append(g["busbw"])
                wrong_total += g["wrong"] or 0
        line = (
            f"{case.nbytes:>10} {case.count:>10} {args.dtype:>8} {redop:>5} {root:>5} "
            f"{_group_text(groups['out_of_place'])} {_group_text(groups['in_place'])} "
            f"{row['bound']:6.3f} {row['extra_mib']:8.1f}"
        )
        for peer in peers:
            pcase = Case(
                args.op, size, dtype, rank, n, args.redop,
                root=args.root, in_place=args.op in IN_PLACE_NATURAL,
            )  # fmt: skip
            if peer.name == "mpi":
                measured = untouched[size]  # timed before ringcomm initialised
            else:
                prun = peer.runner(pcase, args)
                measured = None if prun is None else measure(comm, prun, pcase, args, peer.barrier)
            if measured is None:
                row["peers"][peer.name] = None
                line += f" | {'n/a':>9} {'':>7} {'':>6} {'':>5}"
                continue
            fig = _group(pcase.nbytes, factor, measured)
            assert fig is not None
            fig["ratio"] = natural["busbw"] / fig["busbw"]
            row["peers"][peer.name] = fig
            wrong = "N/A" if fig["wrong"] is None else fig["wrong"]
            line += f" | {fig['time_us']:9.1f} {fig['busbw']:7.3f} {wrong:>6} {fig['ratio']:5.2f}"
        if rank == 0:
            print(line, flush=True)
            if json_out:
                json_out.write(json.dumps(row) + "\n")
            if csv_out:
                csv_out.writerow(csv_row(row))
    if rank == 0:
        verdict = "OK" if wrong_total == 0 else "FAILED"
        avg = sum(busbws) / len(busbws) if busbws else 0.0
        print(f"# Out of bounds values : {wrong_total} {verdict}")
        print(f"# Avg bus bandwidth    : {avg:.4f} ")
        print("#", flush=True)
        if json_out:
            json_out.close()
        if args.csv:
            csv_file.close()
    for peer in peers:
        peer.close()
    comm.close()
    return 1 if wrong_total else 0  # the same on every rank: measure() sums over ranks


if __name__ == "__main__":
    sys.exit(main())
