"""DDP training throughput on CPU: the ringcomm hook, the "ringcomm" backend and gloo, in
one launch on the same model and data.

    ringcomm-run -n 2 python bench/ddp_train.py
    torchrun --nproc-per-node 2 bench/ddp_train.py
    mpiexec -n 2 python bench/ddp_train.py      # ringcomm on its MPI transport

The model is an MLP of about 25 M parameters (``2048 -> 4096 -> 4096 -> 10``); each rank
trains on ``--batch`` samples per step with SGD. The configurations take turns in
``--rounds`` rounds (so drift of this shared machine hits them alike). Per configuration:
median step time over ``--steps`` steps (after ``--warmup``) of the slowest rank, throughput
in samples per second over all ranks, and the ratio to gloo. torch runs one compute thread
per rank (``--threads``), so ranks do not fight over cores for their matrix products.

Every run starts with ``nocomm``: the same DDP model, buckets and optimiser with a comm hook
that returns each bucket untouched, so no communication at all: the floor any library can
reach. Per configuration, ``exposed`` is its step time minus nocomm's (the communication
that backward did not hide) and ``vs gloo`` beside it that as a fraction of gloo's. A
second table splits the slowest rank's step into forward, backward and optimiser, with the
CPU time ringcomm's progress threads spent on the step's communication.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import ringcomm.torch as rt
from ringcomm import config as _config


def make_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(2048, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def nocomm_hook(state, bucket):  # type: ignore[no-untyped-def]
    """A DDP comm hook that communicates nothing: the bucket (a ``dist.GradBucket``) comes
    back as it is. (No annotations: DDP checks them against the real classes, and this
    module's are strings.)"""
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


class Trainer:
    """One configuration's DDP model, optimiser and data on this rank."""

    def __init__(self, config: str, args: argparse.Namespace, groups: dict[str, Any]) -> None:
        group = groups["ringcomm"] if config == "backend" else groups["gloo"]
        self.model = DDP(make_model(args.width), process_group=group)
        if config.startswith("hook"):
            hook = {"hook-fp16": rt.fp16_compress_hook, "hook-bf16": rt.bf16_compress_hook}.get(
                config, rt.allreduce_hook
            )
            self.model.register_comm_hook(groups["hook_comm"], hook)
        elif config == "nocomm":
            self.model.register_comm_hook(None, nocomm_hook)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(dist.get_rank())
        self.x = torch.randn(args.batch, 2048, generator=g)
        self.y = torch.randn(args.batch, 10, generator=g)
        self.times: list[float] = []
        self.phases: list[tuple[float, float, float, float]] = []  # see steps()

    def steps(self, count: int, barrier: Any, record: bool) -> None:
        for _ in range(count):
            barrier()
            cpu0 = progress_cpu()
            t0 = time.perf_counter()
            self.opt.zero_grad()
            loss = nn.functional.mse_loss(self.model(self.x), self.y)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            self.opt.step()
            t3 = time.perf_counter()
            if record:
                self.times.append(t3 - t0)
                self.phases.append((t1 - t0, t2 - t1, t3 - t2, progress_cpu() - cpu0))


def progress_cpu() -> float:
    """CPU seconds ringcomm's progress threads in this process have used (the threads that
    run every asynchronous operation: DDP's bucket all_reduces)."""
    return sum(
        time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        for t in threading.enumerate()
        if t.name.startswith("ringcomm-progress") and t.ident is not None and t.is_alive()
    )


def env_from_mpi_launch() -> None:
    """Under mpiexec (no torchrun variables), give torch's env:// what it needs: rank and
    size from the launcher, and a port rank 0 picks, sent round over ringcomm."""
    if "RANK" in os.environ or _config.mpi_launch() is None:
        return
    import numpy as np

    import ringcomm
    from ringcomm.run import free_port

    with ringcomm.init() as comm:
        port = np.array([free_port() if comm.rank == 0 else 0], np.int64)
        comm.broadcast(port, 0)
        os.environ.update(
            RANK=str(comm.rank),
            WORLD_SIZE=str(comm.size),
            MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
            MASTER_PORT=str(int(port[0])),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per config")
    parser.add_argument("--rounds", type=int, default=3, help="configs alternate this often")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument(
        "--configs",
        default="gloo,backend,hook,hook-fp16,hook-bf16",
        help="comma-separated, in order",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env_from_mpi_launch()
    dist.init_process_group("gloo")
    n, rank = dist.get_world_size(), dist.get_rank()
    groups: dict[str, Any] = {
        "gloo": dist.group.WORLD,
        "ringcomm": dist.new_group(backend="ringcomm"),
        "hook_comm": rt.communicator(),
    }
    params = sum(p.numel() for p in make_model(args.width).parameters())
    configs = ["nocomm"] + [c for c in args.configs.split(",") if c != "nocomm"]
    trainers = {c: Trainer(c, args, groups) for c in configs}
    barrier = lambda: dist.barrier(group=groups["gloo"])  # noqa: E731
    for t in trainers.values():
        t.steps(args.warmup, barrier, record=False)
    # Rounds alternate the configurations, so the machine's drift hits them all alike.
    per_round = max(1, args.steps // args.rounds)
    for round_no in range(args.rounds):
        for t in trainers.values():
            t.steps(per_round, barrier, record=True)
        if rank == 0:  # progress: the median step of each configuration so far (this rank)
            done = ", ".join(
                f"{c} {statistics.median(t.times) * 1e3:.1f} ms" for c, t in trainers.items()
            )
            print(f"# round {round_no + 1}/{args.rounds}: {done}", flush=True)
    results, phases = {}, {}
    for c, t in trainers.items():
        worst = torch.tensor([statistics.median(t.times)], dtype=torch.float64)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=groups["gloo"])
        results[c] = float(worst[0])
        # the same rank's phases: the rank whose median step is the slowest
        slowest = torch.tensor([statistics.median(t.times), rank], dtype=torch.float64)
        gathered = [torch.zeros(2, dtype=torch.float64) for _ in range(n)]
        dist.all_gather(gathered, slowest, group=groups["gloo"])
        who = int(max(gathered, key=lambda g: float(g[0]))[1])
        mine = torch.tensor(
            [statistics.median(p) for p in zip(*t.phases, strict=True)], dtype=torch.float64
        )
        dist.broadcast(mine, who, group=groups["gloo"])
        phases[c] = [float(v) for v in mine]
    if rank == 0:
        transport = groups["hook_comm"].transport
        print(
            f"# DDP, {n} ranks, ringcomm transport {transport}, {params / 1e6:.1f} M parameters, "
            f"batch {args.batch} per rank, {args.threads} torch thread(s) per rank, median of "
            f"{args.steps} steps in {args.rounds} alternating rounds (slowest rank)"
        )
        print(
            f"# {'config':<10} {'step_ms':>9} {'samples/s':>10} {'vs gloo':>8} "
            f"{'exposed_ms':>11} {'vs gloo':>8}"
        )
        base, floor = results.get("gloo"), results["nocomm"]
        gloo_exposed = base - floor if base is not None else None
        for c in configs:
            t = results[c]
            ratio = f"{base / t:8.2f}" if base else f"{'-':>8}"
            exposed = t - floor
            share = f"{'-':>8}"
            if gloo_exposed is not None and gloo_exposed > 0 and c != "nocomm":
                share = f"{exposed / gloo_exposed:8.2f}"
            print(
                f"  {c:<10} {t * 1e3:9.1f} {n * args.batch / t:10.1f} {ratio} "
                f"{exposed * 1e3:11.1f} {share}",
                flush=True,
            )
    if rank == 0:
        print(
            "# where a step goes on the slowest rank (medians): forward, backward (DDP "
            "hands buckets over as it runs, and waits for the last), the optimiser, and the "
            "CPU time ringcomm's progress threads used in the step"
        )
        print(f"# {'config':<10} {'forward':>8} {'backward':>9} {'optim':>6} {'comm_cpu':>9}")
        for c in configs:
            fwd, bwd, opt, cpu = (v * 1e3 for v in phases[c])
            print(f"  {c:<10} {fwd:8.1f} {bwd:9.1f} {opt:6.1f} {cpu:9.1f}", flush=True)
    groups["hook_comm"].close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
