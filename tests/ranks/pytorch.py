"""Run by every rank of ``ringcomm-run -n N python tests/ranks/pytorch.py MODE`` (test_torch.py).

Data parallel: the classic ``Linear(1000,100) -> ReLU -> Linear(100,10)``, SGD, MSE, 20
steps, each rank training on its slice of the global batch with DDP; every rank also trains
a copy on the whole batch in one process and compares. Prints ``RESULT {json}`` and
``PASS rank R MODE``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

# MKL's float results depend on where buffers lie unless its conditional numerical
# reproducibility is on; the sharded modes train twice in one process (ringcomm, then gloo)
# and compare bit for bit. Without it, on an Intel Xeon, two trainings both over gloo
# differed by up to 1e-5 in 1 of 20 launches (Adam magnifies an ulp); with it, 0 of 60.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import torch  # (after MKL_CBWR: MKL reads it when it loads)
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import ringcomm
import ringcomm.torch as rt

STEPS, BATCH, LR = 20, 64, 0.05


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1000, 100), nn.ReLU(), nn.Linear(100, 10))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(BATCH, 1000, generator=g), torch.randn(BATCH, 10, generator=g))
        for _ in range(STEPS)
    ]


def train_alone() -> tuple[nn.Module, list[float]]:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for x, y in batches():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def train_ddp(ddp: DDP, rank: int, n: int) -> list[float]:
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    per = BATCH // n
    losses = []
    for x, y in batches():
        xs, ys = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        opt.zero_grad()
        loss = nn.functional.mse_loss(ddp(xs), ys)
        loss.backward()
        opt.step()
        whole = loss.detach().clone()
        dist.all_reduce(whole)  # the global batch's loss, for the record
        losses.append(whole.item() / n)
    return losses


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(
        (p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def data_parallel(mode: str) -> dict[str, object]:
    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = "ringcomm" if mode == "backend" else "gloo"
    dist.init_process_group(backend)
    assert dist.get_backend() == backend
    ddp = DDP(make_model(), bucket_cap_mb=1)  # several buckets: overlap with backward
    if mode != "backend":
        comm = rt.communicator()
        hook = {
            "hook": rt.allreduce_hook,
            "fp16": rt.fp16_compress_hook,
            "bf16": rt.bf16_compress_hook,
            "wrapper": rt.compress_wrapper(rt.allreduce_hook, torch.bfloat16),
        }[mode]
        ddp.register_comm_hook(comm, hook)
    losses = train_ddp(ddp, rank, n)
    alone, alone_losses = train_alone()
    result = {
        "max_param_diff": max_diff(ddp.module, alone),
        "losses": losses,
        "alone_losses": alone_losses,
    }
    dist.destroy_process_group()
    return result


def model_parallel(mode: str) -> dict[str, object]:
    """Stage 1 (rank 0) = Linear(1000,100)+ReLU, stage 2 (rank 1) = Linear(100,10); 4
    micro-batches pipelined forward, their gradients back; plain SGD on each stage."""
    comm = ringcomm.init()
    assert comm.size == 2
    full = make_model()
    stage = full[:2] if comm.rank == 0 else full[2:]
    opt = torch.optim.SGD(stage.parameters(), lr=LR)
    micro = 4
    per = BATCH // micro
    for x, y in batches():
        opt.zero_grad()
        if comm.rank == 0:
            acts = [stage(x[i * per : (i + 1) * per]) for i in range(micro)]
            sends = [
                comm.send(a.detach().contiguous(), 1, tag=i, async_op=True)
                for i, a in enumerate(acts)
            ]
            for i, a in enumerate(acts):
                grad = torch.empty_like(a)
                comm.recv(grad, 1, tag=100 + i)
                a.backward(grad)
            for w in sends:
                w.wait()
        else:
            for i in range(micro):
                a = torch.empty(per, 100)
                comm.recv(a, 0, tag=i)
                a.requires_grad_(True)
                # the micro-batch's share of the whole batch's mean loss
                loss = nn.functional.mse_loss(stage(a), y[i * per : (i + 1) * per]) / micro
                loss.backward()
                comm.send(a.grad.contiguous(), 0, tag=100 + i)
        opt.step()
    alone, _ = train_alone()
    part = alone[:2] if comm.rank == 0 else alone[2:]
    comm.close()
    return {"max_param_diff": max_diff(stage, part)}


def backend_ops(mode: str) -> dict[str, object]:
    """Every torch.distributed call the backend serves, against what it must give."""
    dist.init_process_group("ringcomm")
    r, n = dist.get_rank(), dist.get_world_size()
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64):
        t = torch.full((1001,), r + 1, dtype=dtype)
        dist.all_reduce(t)
        assert torch.all(t == n * (n + 1) // 2), (dtype, t[:4])
    for op, want in (
        (dist.ReduceOp.MAX, n),
        (dist.ReduceOp.MIN, 1),
        (dist.ReduceOp.PRODUCT, float(torch.arange(1, n + 1).prod())),
        (dist.ReduceOp.AVG, (n + 1) / 2),
    ):
        t = torch.full((7,), float(r + 1))
        dist.all_reduce(t, op=op)
        assert torch.allclose(t, torch.full((7,), float(want))), (op, t)
    b = torch.full((5,), 1 << r, dtype=torch.int32)
    dist.all_reduce(b, op=dist.ReduceOp.BOR)
    assert int(b[0]) == (1 << n) - 1, b
    out = torch.empty(n * 3)
    dist.all_gather_into_tensor(out, torch.full((3,), float(r)))
    assert torch.equal(out, torch.arange(n, dtype=torch.float32).repeat_interleave(3))
    parts = [torch.empty(2, 2) for _ in range(n)]
    dist.all_gather(parts, torch.full((2, 2), float(r)))
    assert all(torch.equal(p, torch.full((2, 2), float(q))) for q, p in enumerate(parts))
    rs = torch.empty(4)
    dist.reduce_scatter_tensor(rs, torch.arange(n * 4, dtype=torch.float32) + r)
    want = (torch.arange(n * 4, dtype=torch.float32) * n + n * (n - 1) / 2)[r * 4 : (r + 1) * 4]
    assert torch.equal(rs, want), (rs, want)
    bc = torch.arange(10.0) if r == n - 1 else torch.zeros(10)
    dist.broadcast(bc, src=n - 1)
    assert torch.equal(bc, torch.arange(10.0))
    red = torch.full((3,), float(r))
    dist.reduce(red, dst=0, op=dist.ReduceOp.SUM)
    if r == 0:
        assert torch.equal(red, torch.full((3,), float(n * (n - 1) / 2)))
    a2a = torch.empty(n * 2)
    dist.all_to_all_single(a2a, torch.arange(n * 2, dtype=torch.float32) + 100 * r)
    want = torch.cat(
        [torch.arange(r * 2, r * 2 + 2, dtype=torch.float32) + 100 * q for q in range(n)]
    )
    assert torch.equal(a2a, want), (a2a, want)
    # all_to_all with unequal splits, single tensor and lists: rank s sends s + d + 1 rows
    # of 2 to rank d
    send = [r + d + 1 for d in range(n)]
    recv = [s + r + 1 for s in range(n)]
    src = torch.cat([torch.full((k, 2), float(100 * r + d)) for d, k in enumerate(send)])
    got = torch.empty(sum(recv), 2)
    dist.all_to_all_single(got, src, output_split_sizes=recv, input_split_sizes=send)
    want = torch.cat([torch.full((k, 2), float(100 * s + r)) for s, k in enumerate(recv)])
    assert torch.equal(got, want), (got, want)
    outs = [torch.empty(k, 2) for k in recv]
    dist.all_to_all(outs, list(src.split(send)))
    assert torch.equal(torch.cat(outs), want)
    # gather, scatter; all_gather of sizes that differ by rank
    g = [torch.empty(3) for _ in range(n)] if r == n - 1 else None
    dist.gather(torch.full((3,), float(r)), g, dst=n - 1)
    if r == n - 1:
        assert all(torch.equal(x, torch.full((3,), float(q))) for q, x in enumerate(g))
    sc = torch.empty(2, 2)
    pieces = [torch.full((2, 2), float(q)) for q in range(n)] if r == 0 else None
    dist.scatter(sc, pieces, src=0)
    assert torch.equal(sc, torch.full((2, 2), float(r)))
    uneven = [torch.empty(q + 1) for q in range(n)]
    dist.all_gather(uneven, torch.full((r + 1,), float(r)))
    assert all(torch.equal(x, torch.full((q + 1,), float(q))) for q, x in enumerate(uneven))
    # coalesced: many tensors as one fused group
    many = [torch.full((k % 7 + 1,), float(r + k)) for k in range(30)]
    dist.all_reduce_coalesced(many)
    assert all(
        torch.equal(t, torch.full_like(t, n * k + n * (n - 1) / 2)) for k, t in enumerate(many)
    )
    # output_lists[q][k]: rank q's tensor k (more tensors than ranks, sizes by tensor)
    lists = [[torch.empty(k + 1) for k in range(n + 2)] for _ in range(n)]
    dist.all_gather_coalesced(
        lists, [torch.full((k + 1,), float(10 * r + k)) for k in range(n + 2)]
    )
    for q, outs in enumerate(lists):
        assert all(
            torch.equal(x, torch.full((k + 1,), float(10 * q + k))) for k, x in enumerate(outs)
        )
    from torch.distributed.distributed_c10d import _coalescing_manager

    bigs, smalls = [torch.empty(n * 4) for _ in range(3)], [torch.empty(4) for _ in range(3)]
    with _coalescing_manager(async_ops=True) as cm:  # (one kind of collective per manager)
        for k in range(3):
            dist.all_gather_into_tensor(bigs[k], torch.full((4,), float(r + k)))
    cm.wait()
    with _coalescing_manager():
        for k in range(3):
            dist.reduce_scatter_tensor(smalls[k], torch.full((n * 4,), float(k)))
    for k in range(3):
        assert torch.equal(bigs[k], (torch.arange(n, dtype=torch.float32) + k).repeat_interleave(4))
        assert torch.equal(smalls[k], torch.full((4,), float(n * k)))
    # batch_isend_irecv with the receives first, both directions
    right, left = (r + 1) % n, (r - 1) % n
    from_left, from_right = torch.empty(3), torch.empty(3)
    ops = [
        dist.P2POp(dist.irecv, from_left, left),
        dist.P2POp(dist.irecv, from_right, right),
        dist.P2POp(dist.isend, torch.full((3,), float(r)), right),
        dist.P2POp(dist.isend, torch.full((3,), float(-r)), left),
    ]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    assert torch.equal(from_left, torch.full((3,), float(left)))
    assert torch.equal(from_right, torch.full((3,), float(-right)))
    # sparse all_reduce (SUM): rank q holds 1 at (q, q) and q at (0, 1); rows of 3 values
    sparse = torch.sparse_coo_tensor([[r, 0], [r, 1]], [[1.0] * 3, [float(r)] * 3], (n, n, 3))
    dist.all_reduce(sparse)
    dense = torch.zeros(n, n, 3)
    for q in range(n):
        dense[q, q] += 1
        dense[0, 1] += q
    assert sparse.is_sparse and torch.equal(sparse.to_dense(), dense), sparse
    # receives from any source: dist.recv without src returns the sender
    if r == 0:
        senders = set()
        for _ in range(n - 1):
            got = torch.empty(2)
            sender = dist.recv(got)
            assert torch.equal(got, torch.full((2,), float(sender))), (sender, got)
            senders.add(sender)
        assert senders == set(range(1, n)), senders
    else:
        dist.send(torch.full((2,), float(r)), 0)
    # object collectives (torch builds them from the backend's collectives)
    objs = [None] * n
    dist.all_gather_object(objs, {"rank": r, "t": torch.arange(r + 1)})
    assert [o["rank"] for o in objs] == list(range(n))
    box = [{"from": "root"} if r == 0 else None]
    dist.broadcast_object_list(box, src=0)
    assert box[0] == {"from": "root"}
    mine = [None]
    dist.scatter_object_list(mine, [f"to {q}" for q in range(n)] if r == 0 else None, src=0)
    assert mine[0] == f"to {r}", mine
    # (dist.monitored_barrier refuses every backend but gloo by name; the group's method is
    # the backend's)
    world = dist.distributed_c10d._get_default_group()
    world.monitored_barrier(datetime.timedelta(seconds=30), wait_all_ranks=True)
    dist.barrier()
    # async ops and their futures
    ts = [torch.full((100,), float(i + r)) for i in range(5)]
    works = [dist.all_reduce(t, async_op=True) for t in ts]
    futs = [w.get_future() for w in works]
    torch.futures.wait_all(futs)
    for i, t in enumerate(ts):
        assert torch.equal(t, torch.full((100,), float(n * i + n * (n - 1) / 2)))
    # point to point around the ring
    right, left = (r + 1) % n, (r - 1) % n
    sent = torch.full((6,), float(r))
    w = dist.isend(sent, right, tag=5)
    got = torch.empty(6)
    dist.recv(got, left, tag=5)
    w.wait()
    assert torch.equal(got, torch.full((6,), float(left)))
    # a sub-group
    evens = dist.new_group([q for q in range(n) if q % 2 == 0])
    if r % 2 == 0:
        e = torch.ones(3)
        dist.all_reduce(e, group=evens)
        assert torch.equal(e, torch.full((3,), float((n + 1) // 2)))
    dist.destroy_process_group()
    return {"ok": True}


def backend_refusals(mode: str) -> dict[str, object]:
    """What the backend cannot serve is refused clearly, and a call's own timeout is kept:
    all_to_all_single with splits that do not match the tensor, then a barrier with a 1 s
    timeout that rank 1 never joins, then a monitored barrier that names rank 1."""
    import datetime

    dist.init_process_group("ringcomm")
    r, n = dist.get_rank(), dist.get_world_size()
    out, inp = torch.empty(n * 3), torch.arange(n * 3, dtype=torch.float32)
    for splits in ([1] * n, [3] * (n - 1) + [2], [n * 3]):  # short, short, too few
        try:
            dist.all_to_all_single(out, inp, output_split_sizes=splits, input_split_sizes=splits)
        except ValueError as e:
            assert "split sizes" in str(e), e
        else:
            raise AssertionError(f"all_to_all_single took splits {splits} of {n * 3} rows")
    dist.barrier()
    if r == 0:
        t0 = time.monotonic()
        try:
            dist.barrier(timeout=datetime.timedelta(seconds=1))
        except RuntimeError as e:  # a DistBackendError, as torch's backends raise
            assert "Timed out" in str(e) and "timed out" in str(e), e
        else:
            raise AssertionError("a barrier rank 1 never joined returned")
        took = time.monotonic() - t0
        assert took < 15, f"the 1 s timeout took {took:.0f} s"
    else:
        time.sleep(4)  # not in the barrier: rank 0's must time out on its own limit
    return {"ok": True}


def monitored(mode: str) -> dict[str, object]:
    """A monitored barrier rank 1 never joins: rank 0 names it."""
    import datetime

    dist.init_process_group("ringcomm")
    if dist.get_rank() == 0:
        try:
            world = dist.distributed_c10d._get_default_group()
            world.monitored_barrier(datetime.timedelta(seconds=1))
        except RuntimeError as e:
            assert "Rank 1 failed to pass monitoredBarrier" in str(e), e
        else:
            raise AssertionError("a monitored barrier rank 1 never joined returned")
    else:
        time.sleep(3)
    return {"ok": True}


def sharded(mode: str) -> dict[str, object]:
    """FSDP (``fully_shard``, per layer and the whole) or ``ZeroRedundancyOptimizer`` over
    DDP, trained on each rank's slice of the batch over the ringcomm backend and over gloo
    in the same launch: the parameters of the two, and of one process on the whole batch."""
    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("ringcomm")
    gloo = dist.new_group(backend="gloo")
    per = BATCH // n
    trained = {}
    for name, group in (("ringcomm", dist.group.WORLD), ("gloo", gloo)):
        model = make_model()
        if mode == "fsdp":
            from torch.distributed.device_mesh import DeviceMesh
            from torch.distributed.fsdp import fully_shard

            mesh = DeviceMesh.from_group(group, "cpu")
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            net: nn.Module = model
            opt = torch.optim.SGD(model.parameters(), lr=LR)
        else:
            from torch.distributed.optim import ZeroRedundancyOptimizer

            net = DDP(model, process_group=group)
            opt = ZeroRedundancyOptimizer(
                net.parameters(), optimizer_class=torch.optim.Adam, lr=LR / 10, process_group=group
            )
        for x, y in batches():
            xs, ys = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
            opt.zero_grad()
            nn.functional.mse_loss(net(xs), ys).backward()
            opt.step()
        params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
        trained[name] = [p.detach().clone() for p in params]
    alone = make_model()
    if mode == "fsdp":  # SGD alone: FSDP averages the gradients as DDP does
        alone, _ = train_alone()
        alone_params = list(alone.parameters())
        vs_alone = max(
            (p - q).abs().max().item()
            for p, q in zip(trained["ringcomm"], alone_params, strict=True)
        )
    else:
        vs_alone = None
    diff = max(
        (p - q).abs().max().item()
        for p, q in zip(trained["ringcomm"], trained["gloo"], strict=True)
    )
    dist.destroy_process_group()
    return {"ringcomm_vs_gloo": diff, "ringcomm_vs_alone": vs_alone}


def main() -> None:
    mode = sys.argv[1]
    if mode == "pipeline":
        result = model_parallel(mode)
    elif mode == "ops":
        result = backend_ops(mode)
    elif mode == "refusals":
        result = backend_refusals(mode)
    elif mode == "monitored":
        result = monitored(mode)
    elif mode in ("fsdp", "zero"):
        result = sharded(mode)
    else:
        result = data_parallel(mode)
    rank = int(os.environ["RANK"])
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    print(f"PASS rank {rank} {mode}", flush=True)


if __name__ == "__main__":
    main()
