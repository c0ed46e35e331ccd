"""nccl-tests style benchmark of ringcomm's collectives, with its peers beside it in one launch.

    ringcomm-run -n 4 python bench/collectives.py all_reduce -b 4K -e 64M -f 4 --peer gloo
    mpiexec -n 4 python bench/collectives.py all_reduce -b 4K -e 64M -f 4 --peer mpi,zmq,gloo

Per row: size (bytes; for all_gather/reduce_scatter/all_to_all the whole gathered/scattered
buffer, as nccl-tests prints it), count (elements), type, redop | time (median over the
iterations of the slowest rank), algbw = size / time, busbw = algbw * factor, #wrong
(elements that differ from the expected result after one checked run, summed over ranks),
extra memory (peak resident memory above the buffers during the timed loop, max over ranks).
busbw factors: all_reduce 2(n-1)/n; all_gather, reduce_scatter, all_to_all (n-1)/n;
broadcast, reduce 1.

``--peer`` adds, per row, the same op on the same sizes and buffers by (comma-separated):
``gloo`` (torch.distributed, torch.set_num_threads(1): its fastest setting here), ``mpi``
(mpi4py's Allreduce / Allgather / Reduce_scatter_block / Bcast / Reduce / Alltoall; needs
an MPI launch), ``zmq`` (ringcomm itself over ZeroMQ sockets, beside a run over another
transport). Each peer gets time, busbw, #wrong and the ratio ringcomm busbw / peer busbw.
"""

from __future__ import annotations

import argparse
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
REDOPS = {
    "sum": ringcomm.SUM,
    "prod": ringcomm.PROD,
    "min": ringcomm.MIN,
    "max": ringcomm.MAX,
    "avg": ringcomm.AVG,
}


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
    """Buffers and expected results of one op at one size on one rank."""

    def __init__(self, op: str, nbytes: int, dtype: np.dtype, rank: int, n: int, redop: str):
        self.op, self.rank, self.n, self.redop = op, rank, n, redop
        per_rank = op in ("all_gather", "reduce_scatter", "all_to_all")
        count = max(nbytes // dtype.itemsize, n if per_rank else 1)
        if per_rank:
            count -= count % n
        self.count = count
        self.nbytes = count * dtype.itemsize
        small = count // n if per_rank else count
        base = (np.arange(count) % 7).astype(dtype)
        if op == "all_reduce" or op == "reduce":
            self.send = base + rank
            self.buf = self.send.copy()
        elif op == "broadcast":
            self.send = base + 1
            self.buf = self.send.copy() if rank == 0 else np.zeros(count, dtype)
        elif op == "all_gather":
            self.send = (base[:small] + rank).astype(dtype)
            self.buf = np.zeros(count, dtype)
        else:  # reduce_scatter, all_to_all
            self.send = (base + rank).astype(dtype)
            self.buf = np.zeros(small if op == "reduce_scatter" else count, dtype)

    def reset(self) -> None:
        """Before the checked run: in-place buffers as at the start, every output filled with
        a value no correct result holds, so a run that writes nothing counts as wrong."""
        if self.op in ("all_reduce", "reduce") or (self.op == "broadcast" and self.rank == 0):
            self.buf[:] = self.send
        else:
            self.buf[:] = sentinel(self.buf.dtype)

    def expected(self) -> np.ndarray:
        n, base = self.n, (np.arange(self.count) % 7).astype(np.float64)
        ranks = np.arange(n, dtype=np.float64)
        combine = {"sum": np.sum, "avg": np.mean, "max": np.max, "min": np.min, "prod": np.prod}
        reduced = combine[self.redop](base[None, :] + ranks[:, None], axis=0)
        if self.op == "all_reduce" or (self.op == "reduce" and self.rank == 0):
            return reduced
        if self.op == "reduce":
            return self.send  # non-root buffers are left unchanged
        if self.op == "broadcast":
            return base + 1
        small = self.count // n
        if self.op == "all_gather":
            return np.concatenate([base[:small] + r for r in range(n)])
        if self.op == "reduce_scatter":
            return reduced[self.rank * small : (self.rank + 1) * small]
        return np.concatenate(
            [base[self.rank * small : (self.rank + 1) * small] + s for s in range(n)]
        )

    def wrong(self) -> int:
        want = self.expected()
        return int(np.count_nonzero(~np.isclose(self.buf.astype(np.float64), want, rtol=1e-5)))


def ringcomm_runner(
    comm: ringcomm.Communicator, case: Case, args: argparse.Namespace
) -> Callable[[], None]:
    op, redop = case.op, REDOPS[args.redop]
    if op == "all_reduce":
        return lambda: comm.all_reduce(case.buf, redop, algorithm=args.algorithm)
    if op == "all_gather":
        return lambda: comm.all_gather(case.buf, case.send)
    if op == "reduce_scatter":
        return lambda: comm.reduce_scatter(case.buf, case.send, redop)
    if op == "broadcast":
        return lambda: comm.broadcast(case.buf, 0, algorithm=args.broadcast_algorithm)
    if op == "reduce":
        return lambda: comm.reduce(case.buf, 0, redop)
    return lambda: comm.all_to_all(case.buf, case.send)


def gloo_runner(case: Case, args: argparse.Namespace) -> Callable[[], None] | None:
    import torch
    import torch.distributed as dist

    redop = {
        "sum": dist.ReduceOp.SUM,
        "prod": dist.ReduceOp.PRODUCT,
        "min": dist.ReduceOp.MIN,
        "max": dist.ReduceOp.MAX,
        "avg": dist.ReduceOp.AVG,
    }[args.redop]
    buf, send = torch.from_numpy(case.buf), torch.from_numpy(case.send)
    op = case.op
    if op == "all_reduce":
        if args.redop == "avg":
            return None  # gloo has no AVG
        return lambda: dist.all_reduce(buf, redop)
    if op == "all_gather":
        return lambda: dist.all_gather_into_tensor(buf, send)
    if op == "reduce_scatter":
        return lambda: dist.reduce_scatter_tensor(buf, send, redop)
    if op == "broadcast":
        return lambda: dist.broadcast(buf, 0)
    if op == "reduce":
        return lambda: dist.reduce(buf, 0, redop)
    return lambda: dist.all_to_all_single(buf, send)


def mpi_runner(case: Case, args: argparse.Namespace) -> Callable[[], None] | None:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    redop = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX}.get(args.redop)
    if redop is None and case.op in ("all_reduce", "reduce_scatter", "reduce"):
        return None  # MPI has no AVG
    buf, send = case.buf, case.send
    op = case.op
    if op == "all_reduce":
        return lambda: world.Allreduce(MPI.IN_PLACE, buf, redop)
    if op == "all_gather":
        return lambda: world.Allgather(send, buf)
    if op == "reduce_scatter":
        return lambda: world.Reduce_scatter_block(send, buf, redop)
    if op == "broadcast":
        return lambda: world.Bcast(buf, 0)
    if op == "reduce":
        if world.Get_rank() == 0:
            return lambda: world.Reduce(MPI.IN_PLACE, buf, redop, 0)
        return lambda: world.Reduce(buf, None, redop, 0)
    return lambda: world.Alltoall(send, buf)


def init_gloo(comm: ringcomm.Communicator) -> None:
    """torch.distributed's gloo on a port rank 0 picked (works under any launcher)."""
    import torch
    import torch.distributed as dist

    from ringcomm.run import free_port

    torch.set_num_threads(1)
    port = np.array([free_port() if comm.rank == 0 else 0], np.int64)
    comm.broadcast(port, 0)
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group(
        "gloo", init_method=f"tcp://{host}:{int(port[0])}", rank=comm.rank, world_size=comm.size
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
        else:  # ringcomm over another transport
            self.comm = ringcomm.init(transport=name)
            self.barrier = self.comm.barrier

    def runner(self, case: Case, args: argparse.Namespace) -> Callable[[], None] | None:
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


def measure(
    comm: ringcomm.Communicator,
    run: Callable[[], None],
    case: Case,
    args: argparse.Namespace,
    barrier: Callable[[], None],
) -> tuple[float, int, float]:
    """Return (median seconds of the slowest rank, #wrong over ranks, extra MiB max over ranks)."""
    for _ in range(args.warmup):
        run()
    barrier()
    base_rss, _ = _memory_kib()
    _reset_peak()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    _, peak = _memory_kib()
    case.reset()
    run()
    stats = np.array([np.median(times), case.wrong(), max(0, peak - base_rss) / 1024.0])
    worst = stats.copy()
    comm.all_reduce(worst, ringcomm.MAX)
    wrong = stats[1:2].copy()
    comm.all_reduce(wrong, ringcomm.SUM)
    return float(worst[0]), int(wrong[0]), float(worst[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op", choices=OPS)
    parser.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("4K"))
    parser.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("64M"))
    parser.add_argument("-f", "--stepfactor", type=int, default=4)
    parser.add_argument("-n", "--iters", type=int, default=20, help="timed iterations (median)")
    parser.add_argument("-w", "--warmup", type=int, default=5)
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
    args = parser.parse_args(argv)
    if args.stepfactor < 2:
        parser.error("-f must be at least 2")
    peer_names = [p for p in args.peer.split(",") if p and p != "none"]
    for p in peer_names:
        if p not in PEERS:
            parser.error(f"--peer {p!r}: expected some of {', '.join(PEERS)}")

    comm = ringcomm.init()
    rank, n = comm.rank, comm.size
    dtype = np.dtype(args.dtype)
    peers = [Peer(p, comm, args) for p in peer_names]
    sizes = []
    s = args.minbytes
    while s <= args.maxbytes:
        sizes.append(s)
        s *= args.stepfactor
    out = open(args.json, "a") if args.json and rank == 0 else None  # noqa: SIM115
    if rank == 0:
        alg = args.algorithm or "auto"
        print(
            f"# ringcomm {ringcomm.__version__} {args.op}: {n} ranks, transport "
            f"{comm.transport}, algorithm {alg}, median of {args.iters} iterations (slowest "
            f"rank), peers: {', '.join(peer_names) or 'none'}"
        )
        head = (
            f"{'size':>10} {'count':>10} {'type':>8} {'redop':>5} | {'time':>9} "
            f"{'algbw':>7} {'busbw':>7} {'#wrong':>6} {'extraMiB':>8}"
        )
        units = (
            f"{'(B)':>10} {'(elems)':>10} {'':>8} {'':>5} | {'(us)':>9} "
            f"{'(GB/s)':>7} {'(GB/s)':>7} {'':>6} {'':>8}"
        )
        for p in peer_names:
            head += f" | {p + '_us':>9} {'busbw':>7} {'#wrong':>6} {'ratio':>5}"
            units += f" | {'(us)':>9} {'(GB/s)':>7} {'':>6} {'':>5}"
        print("#" + head[1:])
        print("#" + units[1:])
        sys.stdout.flush()
    factor = bus_factor(args.op, n)
    for size in sizes:
        case = Case(args.op, size, dtype, rank, n, args.redop)
        t, wrong, extra = measure(comm, ringcomm_runner(comm, case, args), case, args, comm.barrier)
        row: dict[str, Any] = {
            "op": args.op,
            "ranks": n,
            "size": case.nbytes,
            "count": case.count,
            "type": args.dtype,
            "redop": args.redop,
            "algorithm": args.algorithm or "auto",
            "time_us": t * 1e6,
            "algbw": case.nbytes / t / 1e9,
            "busbw": case.nbytes / t / 1e9 * factor,
            "wrong": wrong,
            "extra_mib": extra,
        }
        line = (
            f"{case.nbytes:>10} {case.count:>10} {args.dtype:>8} {args.redop:>5} | "
            f"{row['time_us']:9.1f} {row['algbw']:7.3f} {row['busbw']:7.3f} {wrong:>6} "
            f"{extra:8.1f}"
        )
        for peer in peers:
            pcase = Case(args.op, size, dtype, rank, n, args.redop)
            prun = peer.runner(pcase, args)
            if prun is None:
                line += f" | {'n/a':>9} {'':>7} {'':>6} {'':>5}"
                continue
            pt, pwrong, _ = measure(comm, prun, pcase, args, peer.barrier)
            pbus = pcase.nbytes / pt / 1e9 * factor
            row[peer.name] = {"time_us": pt * 1e6, "busbw": pbus, "wrong": pwrong}
            row[peer.name]["ratio"] = row["busbw"] / pbus
            line += f" | {pt * 1e6:9.1f} {pbus:7.3f} {pwrong:>6} {row['busbw'] / pbus:5.2f}"
        if rank == 0:
            print(line, flush=True)
            if out:
                out.write(json.dumps(row) + "\n")
    if out:
        out.close()
    for peer in peers:
        peer.close()
    comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
