"""GPU check: ringcomm's collectives on CuPy arrays and torch CUDA tensors, its device
kernels, and DDP with CUDA gradients through ringcomm's hooks. Run by ``bench/gpu_check.sh``.

    python bench/gpu_check.py kernels                    # kernel correctness and bandwidth
    ringcomm-run -n 4 python bench/gpu_check.py ranks    # every collective, device buffers
    ringcomm-run -n 2 python bench/gpu_check.py ddp      # DDP + allreduce/fp16 hooks on CUDA

Every rank prints ``GPUCHECK {json}`` lines; the driver turns them into a table. A check
that fails prints what differed and the process exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

import ringcomm

# A reduction streams 3 bytes per element where a copy streams 2: at memory speed it moves
# as many bytes per second. 0.87-0.93x was measured on an H100; under 0.7x the kernel is
# wasting bandwidth.
MIN_REDUCE_VS_COPY = 0.7

# The rows each step of gpu_check.sh must print (prefixes of their "check"), by step label.
EXPECTED = {
    "numba warm-up": [],
    "kernels": ["kernels compile (NVRTC)", "kernels correct", "kernel bandwidth"],
    "n=1, auto (NCCL)": ["collectives, n=1"],
    "n=1, staging": ["collectives, n=1 [staging]"],
    "n=2, auto (staging: one GPU)": ["collectives, n=2"],
    "n=3, auto (staging: one GPU)": ["collectives, n=3"],
    "n=4, auto (staging: one GPU)": ["collectives, n=4"],
    "DDP, n=2": ["DDP on CUDA, n=2"],
}


def emit(**row: Any) -> None:
    print("GPUCHECK " + json.dumps(row), flush=True)


# -- device kernels --------------------------------------------------------------------------
def check_kernels() -> int:
    import cupy

    from ringcomm.native import cuda as k

    failures: list[str] = []
    t0 = time.perf_counter()
    k.compile_all()
    emit(check="kernels compile (NVRTC)", ok=True, seconds=round(time.perf_counter() - t0, 2))
    rng = np.random.default_rng(0)
    n = 100_003
    for dtype in ("float32", "float64", "float16", "int32", "int64", "uint8", "int8", "bool"):
        for op, ref in (
            (ringcomm.SUM, np.add),
            (ringcomm.MAX, np.maximum),
            (ringcomm.MIN, np.minimum),
            (ringcomm.PROD, np.multiply),
        ):
            a = (rng.random(n) * 8).astype(dtype)
            b = (rng.random(n) * 8).astype(dtype)
            out = cupy.asarray(a)
            k.reduce_into(out, cupy.asarray(b), int(op))
            want = ref(a, b) if dtype != "bool" else ref(a, b).astype(bool)
            got = cupy.asnumpy(out)
            tol = 1e-3 if dtype == "float16" else 0
            if not np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=0):
                failures.append(f"reduce {op.name} {dtype}")
        if dtype in ("int32", "int64", "uint8", "int8"):
            a = rng.integers(0, 100, n).astype(dtype)
            b = rng.integers(0, 100, n).astype(dtype)
            for op, ref in ((ringcomm.BAND, np.bitwise_and), (ringcomm.BXOR, np.bitwise_xor)):
                out = cupy.asarray(a)
                k.reduce_into(out, cupy.asarray(b), int(op))
                if not np.array_equal(cupy.asnumpy(out), ref(a, b)):
                    failures.append(f"reduce {op.name} {dtype}")
    # bfloat16 (bits) and the casts, against ringcomm's host conversions.
    x = (rng.standard_normal(n) * 100).astype(np.float32)
    for half in ("float16", "bfloat16"):
        bits = cupy.empty(n, np.uint16)
        k.narrow(cupy.asarray(x), bits, half, 0.25)
        host = x * np.float32(0.25)
        want = (
            ringcomm.native.f32_to_bf16(host) if half == "bfloat16" else host.astype(np.float16)
        ).view(np.uint16)
        if not np.array_equal(cupy.asnumpy(bits), want):
            failures.append(f"narrow {half}")
        back = cupy.empty(n, np.float32)
        k.widen(bits, back, half)
        wide = (
            ringcomm.native.bf16_to_f32(want) if half == "bfloat16" else want.view(np.float16)
        ).astype(np.float32)
        if not np.array_equal(cupy.asnumpy(back), wide):
            failures.append(f"widen {half}")
        other = cupy.asarray(want)
        mine = cupy.asarray(want)
        k.reduce_into(mine, other, int(ringcomm.SUM), half)
        h = want.copy()
        ringcomm.native.reduce_into(h, want, int(ringcomm.SUM), half == "bfloat16")
        if half == "float16":
            h = want.view(np.float16) + want.view(np.float16)
            h = h.view(np.uint16)
        if not np.array_equal(cupy.asnumpy(mine), h):
            failures.append(f"reduce SUM {half} vs host kernel")
    emit(
        check="kernels correct (reduce: 4 ops x 8 dtypes, 2 bitwise x 4 ints; 16-bit casts, sums)",
        ok=not failures,
        failures=failures,
    )

    # Bandwidth: reduce (reads 2, writes 1) against a device-to-device copy (reads 1,
    # writes 1), 256 MiB of float32, bytes moved per second.
    nbytes = 256 << 20
    a = cupy.ones(nbytes // 4, np.float32)
    b = cupy.ones(nbytes // 4, np.float32)
    c = cupy.empty_like(a)

    def timed(fn: Callable[[], None], reps: int = 20) -> float:
        fn()
        cupy.cuda.runtime.deviceSynchronize()
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        times = []
        for _ in range(reps):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
        return float(np.median(times))

    t_copy = timed(lambda: c.data.copy_from_device(a.data, nbytes))
    t_red = timed(lambda: k.reduce_into(a, b, int(ringcomm.SUM)))
    a16, b16 = a.view(np.uint16), b.view(np.uint16)
    t_bf = timed(lambda: k.reduce_into(a16, b16, int(ringcomm.SUM), "bfloat16"))
    reduce_vs_copy = (3 * nbytes / t_red) / (2 * nbytes / t_copy)
    emit(
        check="kernel bandwidth, 256 MiB",
        ok=reduce_vs_copy >= MIN_REDUCE_VS_COPY,
        failures=[]
        if reduce_vs_copy >= MIN_REDUCE_VS_COPY
        else [
            f"reduce moves {reduce_vs_copy:.2f}x the bytes/s of a device copy, "
            f"under {MIN_REDUCE_VS_COPY}"
        ],
        copy_gbs=round(2 * nbytes / t_copy / 1e9, 1),
        reduce_f32_gbs=round(3 * nbytes / t_red / 1e9, 1),
        reduce_bf16_gbs=round(3 * nbytes / t_bf / 1e9, 1),
        reduce_vs_copy=round(reduce_vs_copy, 2),
    )
    return 1 if failures or reduce_vs_copy < MIN_REDUCE_VS_COPY else 0


# -- collectives on device buffers ----------------------------------------------------------
def _inputs(rank: int, count: int, dtype: str) -> np.ndarray:
    i = np.arange(count)
    if dtype in ("float32", "float64", "float16", "bfloat16"):
        return ((i % 7) + 1 + rank * 0.5).astype(np.float32 if dtype == "bfloat16" else dtype)
    if dtype == "bool":
        return ((i + rank) % 3) == 0
    return (((i % 13) + 1) * (rank + 1)).astype(dtype)


class Maker:
    """Makes device buffers of one kind ("cupy" or "torch") from numpy arrays and back."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        import cupy

        self.cupy = cupy
        if kind == "torch":
            import torch

            self.torch = torch

    def dev(self, a: np.ndarray, dtype: str) -> Any:
        if self.kind == "cupy":
            return self.cupy.asarray(a)
        t = self.torch.from_numpy(np.ascontiguousarray(a))
        if dtype == "bfloat16":
            t = t.to(self.torch.bfloat16)
        return t.cuda()

    def host(self, d: Any) -> np.ndarray:
        if self.kind == "cupy":
            return self.cupy.asnumpy(d)
        return d.float().cpu().numpy() if d.dtype == self.torch.bfloat16 else d.cpu().numpy()

    def empty(self, count: int, dtype: str) -> Any:
        return self.dev(np.zeros(count, np.float32 if dtype == "bfloat16" else dtype), dtype)


def _reduce_ref(arrays: list[np.ndarray], op: ringcomm.ReduceOp) -> np.ndarray:
    stack = np.stack([a.astype(np.float64) if a.dtype != bool else a for a in arrays])
    if op in (ringcomm.SUM, ringcomm.AVG):
        r = stack.any(0) if stack.dtype == bool else stack.sum(0)
        return r / len(arrays) if op == ringcomm.AVG else r
    if op == ringcomm.MAX:
        return stack.max(0)
    if op == ringcomm.MIN:
        return stack.min(0)
    if op == ringcomm.PROD:
        return stack.prod(0)
    if op == ringcomm.BAND:
        return np.bitwise_and.reduce(np.stack(arrays), 0)
    raise ValueError(op)


def _close(got: np.ndarray, want: np.ndarray, dtype: str) -> bool:
    tol = {"float16": 2e-3, "bfloat16": 2e-2}.get(dtype, 1e-6)
    if dtype == "bool" or want.dtype == bool:
        return np.array_equal(got.astype(bool), want.astype(bool))
    return np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


def case_checks(
    comm: ringcomm.Communicator, mk: Maker, dtype: str, op: ringcomm.ReduceOp, count: int
) -> list[Callable[[], bool]]:
    """Every collective on one kind of buffer, dtype, op and count; each returns ok."""
    r, n = comm.rank, comm.size
    mine = _inputs(r, count, dtype)
    all_in = [_inputs(q, count, dtype) for q in range(n)]

    def all_reduce() -> bool:
        d = mk.dev(mine, dtype)
        comm.all_reduce(d, op)
        return _close(mk.host(d), _reduce_ref(all_in, op), dtype)

    def broadcast() -> bool:
        root = 1 % n
        d = mk.dev(mine, dtype)
        comm.broadcast(d, root)
        return _close(mk.host(d), all_in[root], dtype)

    def reduce() -> bool:
        root = n - 1
        d = mk.dev(mine, dtype)
        comm.reduce(d, root, ringcomm.SUM if op == ringcomm.BAND else op)
        want = _reduce_ref(all_in, ringcomm.SUM if op == ringcomm.BAND else op)
        return _close(mk.host(d), want if r == root else mine, dtype)

    def all_gather() -> bool:
        out = mk.empty(count * n, dtype)
        comm.all_gather(out, mk.dev(mine, dtype))
        return _close(mk.host(out), np.concatenate(all_in), dtype)

    def reduce_scatter() -> bool:
        big = [_inputs(q, count * n, dtype) for q in range(n)]
        out = mk.empty(count, dtype)
        rop = ringcomm.SUM if op == ringcomm.BAND else op
        comm.reduce_scatter(out, mk.dev(big[r], dtype), rop)
        want = _reduce_ref(big, rop)[r * count : (r + 1) * count]
        return _close(mk.host(out), want, dtype)

    def gather_scatter() -> bool:
        out = mk.empty(count * n, dtype) if r == 0 else None
        comm.gather(out, mk.dev(mine, dtype), 0)
        ok = r != 0 or _close(mk.host(out), np.concatenate(all_in), dtype)
        piece = mk.empty(count, dtype)
        src = mk.dev(np.concatenate(all_in), dtype) if r == 0 else None
        comm.scatter(piece, src, 0)
        return ok and _close(mk.host(piece), all_in[r], dtype)

    def all_to_all() -> bool:
        per = count // n * n
        big = [_inputs(q, per, dtype) for q in range(n)]
        out = mk.empty(per, dtype)
        comm.all_to_all(out, mk.dev(big[r], dtype))
        k = per // n
        want = np.concatenate([big[q][r * k : (r + 1) * k] for q in range(n)])
        return _close(mk.host(out), want, dtype)

    def send_recv() -> bool:
        right, left = (r + 1) % n, (r - 1) % n
        got = mk.empty(count, dtype)
        w = comm.send(mk.dev(mine, dtype), right, tag=3, async_op=True)
        comm.recv(got, left, tag=3)
        w.wait()
        return _close(mk.host(got), all_in[left], dtype)

    def async_ops() -> bool:
        ds = [mk.dev(mine, dtype) for _ in range(3)]
        works = [comm.all_reduce(d, op, async_op=True) for d in ds]
        for w in works:
            w.wait()
        want = _reduce_ref(all_in, op)
        return all(_close(mk.host(d), want, dtype) for d in ds)

    return [
        all_reduce,
        broadcast,
        reduce,
        all_gather,
        reduce_scatter,
        gather_scatter,
        all_to_all,
        send_recv,
        async_ops,
    ]


def check_ranks(count_big: int) -> int:
    import cupy

    comm = ringcomm.init()
    cupy.cuda.Device(0).use()
    r, n = comm.rank, comm.size
    failures: list[str] = []
    checks = 0

    def check(label: str, fn: Callable[[], bool]) -> None:
        nonlocal checks
        checks += 1
        try:
            if not fn():
                failures.append(label)
        except Exception:
            failures.append(f"{label}: {traceback.format_exc(limit=3)}")

    cases = [
        ("cupy", "float32", ringcomm.SUM),
        ("cupy", "float64", ringcomm.MAX),
        ("cupy", "float16", ringcomm.AVG),
        ("cupy", "int32", ringcomm.BAND),
        ("cupy", "int16", ringcomm.SUM),
        ("cupy", "bool", ringcomm.MAX),
        ("torch", "float32", ringcomm.AVG),
        ("torch", "bfloat16", ringcomm.SUM),
        ("torch", "int64", ringcomm.MIN),
    ]
    for kind, dtype, op in cases:
        mk = Maker(kind)
        for count in (1000, count_big):
            for fn in case_checks(comm, mk, dtype, op, count):
                check(f"{fn.__name__} {kind} {dtype} x{count} op={op.name}", fn)

    # In-place all_gather, a sub-communicator, a barrier.
    def in_place() -> bool:
        out = cupy.zeros(100 * n, np.float32)
        out[r * 100 : (r + 1) * 100] = r + 1
        comm.all_gather(out, out[r * 100 : (r + 1) * 100])
        return bool((cupy.asnumpy(out) == np.repeat(np.arange(1, n + 1), 100)).all())

    def split() -> bool:
        sub = comm.split(color=r % 2)
        try:
            d = cupy.full(1000, r + 1, np.float32)
            sub.all_reduce(d)
            want = sum(q + 1 for q in range(n) if q % 2 == r % 2)
            return bool((cupy.asnumpy(d) == want).all())
        finally:
            sub.close()

    check("all_gather in place (cupy)", in_place)
    check("split + all_reduce (cupy)", split)
    check("barrier", lambda: comm.barrier() is None)

    # Throughput: all_reduce of 64 MiB float32, device buffer vs host buffer, busbw.
    rows = {}
    for where in ("device", "host"):
        buf = (
            cupy.ones(16 << 20, np.float32) if where == "device" else np.ones(16 << 20, np.float32)
        )
        for _ in range(2):
            comm.all_reduce(buf)
        times = []
        for _ in range(8):
            comm.barrier()
            t0 = time.perf_counter()
            comm.all_reduce(buf)
            times.append(time.perf_counter() - t0)
        t = float(np.median(times))
        rows[where] = round((64 << 20) / t * (2 * (n - 1) / n if n > 1 else 1) / 1e9, 2)
    rows["gloo_device"] = _gloo_cuda_busbw(comm) if n > 1 else None
    emit(
        check=f"collectives, n={n}",
        path_forced=os.environ.get("RINGCOMM_GPU_PATH", ""),
        rank=r,
        path=comm.gpu_path,
        transport=comm.transport,
        checks=checks,
        ok=not failures,
        failures=failures[:10],
        busbw_64MiB_device_gbs=rows["device"],
        busbw_64MiB_host_gbs=rows["host"],
        busbw_64MiB_gloo_device_gbs=rows["gloo_device"],
    )
    comm.close()
    return 1 if failures else 0


def _gloo_cuda_busbw(comm: ringcomm.Communicator) -> float | str:
    """The peer: torch's gloo all_reduce on the same 64 MiB, as a CUDA tensor (busbw)."""
    try:
        import torch
        import torch.distributed as dist

        r, n = comm.rank, comm.size
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + 2, n, r == 0
        )
        dist.init_process_group("gloo", store=store, rank=r, world_size=n)
        t = torch.ones(16 << 20, device="cuda")
        for _ in range(2):
            dist.all_reduce(t)
        times = []
        for _ in range(8):
            dist.barrier()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        dist.destroy_process_group()
        return round((64 << 20) / float(np.median(times)) * 2 * (n - 1) / n / 1e9, 2)
    except Exception as e:  # the peer is context, not a check
        return f"gloo failed: {type(e).__name__}: {e}"[:200]


# -- DDP with CUDA gradients ----------------------------------------------------------------
def check_ddp(steps: int) -> int:
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    import ringcomm.torch as rt

    comm = ringcomm.init()
    r, n = comm.rank, comm.size
    torch.cuda.set_device(0)
    # DDP wants a process group for its own setup (parameter broadcast): ringcomm's backend.
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + 1, n, r == 0)
    dist.init_process_group("ringcomm", store=store, rank=r, world_size=n)
    failures: list[str] = []
    results = {}
    for name, hook, tol in (
        ("allreduce_hook", rt.allreduce_hook, 1e-5),
        ("fp16_compress_hook", rt.fp16_compress_hook, 2e-3),
        ("bf16_compress_hook", rt.bf16_compress_hook, 2e-2),
    ):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10)).cuda()
        ddp = DDP(model, device_ids=[0], bucket_cap_mb=1)
        ddp.register_comm_hook(comm, hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        t0 = time.perf_counter()
        worst = 0.0
        for step in range(steps):
            torch.manual_seed(1000 * step + r)
            x = torch.randn(64, 256, device="cuda")
            y = torch.randint(0, 10, (64,), device="cuda")
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            # The averaged gradient, from every rank's local one gathered on the host.
            local = [p.grad.detach().clone() for p in model.parameters()]
            opt.step()
            if step == 0:  # same initial weights as the DDP model, this rank's data only
                torch.manual_seed(0)
                ref = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10)).cuda()
                ref.zero_grad()
                nn.functional.cross_entropy(ref(x), y).backward()
                mine = torch.cat([p.grad.reshape(-1) for p in ref.parameters()]).cpu().numpy()
                every = np.empty(mine.size * n, np.float32)
                comm.all_gather(every, mine)
                want = every.reshape(n, -1).mean(0)
                got = torch.cat([g.reshape(-1) for g in local]).cpu().numpy()
                worst = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-12))
        torch.cuda.synchronize()
        elapsed = (time.perf_counter() - t0) / steps
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu().numpy()
        every = np.empty(flat.size * n, np.float32)
        comm.all_gather(every, flat)
        same = bool((every.reshape(n, -1) == flat).all())
        ok = same and worst <= tol
        if not ok:
            failures.append(f"{name}: params equal on all ranks {same}, grad error {worst:.2e}")
        results[name] = {"grad_rel_error": f"{worst:.1e}", "ms_per_step": round(elapsed * 1e3, 1)}
    emit(
        check=f"DDP on CUDA, n={n}",
        rank=r,
        path=comm.gpu_path,
        ok=not failures,
        failures=failures,
        **results,
    )
    dist.destroy_process_group()
    comm.close()
    return 1 if failures else 0


def table(log: str) -> int:
    """Print the table of ``log``: every row the steps were expected to print (EXPECTED),
    rank 0's for multi-rank checks with the other ranks' failures merged in. A row no rank
    printed is a FAIL with its step's exit status and the end of its output; so is a step
    that exited non-zero. Returns 1 when any row is FAIL."""
    rows: dict[str, dict[str, Any]] = {}
    steps: list[dict[str, Any]] = []
    with open(log, errors="replace") as f:
        lines = f.readlines()
    for line in lines:
        if line.startswith("GPUSTEP "):
            steps.append(json.loads(line[8:]))
            continue
        at = line.find("GPUCHECK ")
        if at < 0:
            continue
        row = json.loads(line[at + 9 :])
        key = row["check"] + (f" [{row['path_forced']}]" if row.get("path_forced") else "")
        seen = rows.setdefault(key, row)
        if seen is not row:
            seen["ok"] = seen["ok"] and row["ok"]
            seen["failures"] = seen.get("failures", []) + row.get("failures", [])
    ran = {s["label"]: s for s in steps}
    for label, wanted in EXPECTED.items():
        step = ran.get(label)
        for prefix in wanted or [None]:
            found = [k for k in rows if prefix is not None and _is_row(k, prefix)]
            if prefix is not None and not found:
                rows[prefix] = {"check": prefix, "ok": False, "failures": [_why_missing(step)]}
            elif step is not None and step["rc"] != 0:  # printed rows, then died (or no rows)
                key = found[0] if found else f"step: {label}"
                row = rows.setdefault(key, {"check": key, "ok": False, "failures": []})
                row["ok"] = False
                row.setdefault("failures", []).append(_why_missing(step))
            elif step is None and prefix is None:
                rows[f"step: {label}"] = {"check": label, "ok": False, "failures": ["not run"]}
    print("| check | result | details |")
    print("|---|---|---|")
    bad = 0
    for key, row in rows.items():
        bad += not row["ok"]
        details = ", ".join(
            f"{k}={v}" for k, v in row.items() if k not in ("check", "ok", "rank", "failures")
        )
        failures = {str(f).replace("\n", " ")[:300] for f in row.get("failures", [])}
        fails = "; ".join(sorted(failures))
        print(f"| {key} | {'PASS' if row['ok'] else 'FAIL'} | {details} {fails} |")
    return 1 if bad else 0


def _is_row(key: str, name: str) -> bool:
    """Whether table row ``key`` is the expected row ``name`` ("kernels correct" is
    "kernels correct (reduce: ...)", but "collectives, n=1" is not "... [staging]")."""
    return key == name or key.startswith((name + " (", name + ", "))


def _why_missing(step: dict[str, Any] | None) -> str:
    """A failed step, as a table cell: its exit status (124: timed out) and last lines."""
    if step is None:
        return "its step did not run"
    tail = ""
    try:
        with open(step["log"], errors="replace") as f:
            tail = " / ".join(line.strip() for line in f.readlines()[-4:] if line.strip())
    except OSError:
        pass
    how = "timed out" if step["rc"] in (124, 137) else f"exited {step['rc']}"
    return f"step '{step['label']}' {how} after {step['seconds']} s: {tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("kernels", "ranks", "ddp", "table"))
    parser.add_argument("log", nargs="?", help="table: the log to read")
    parser.add_argument(
        "--count", type=int, default=(3 << 20) // 4 + 17, help="elements of the large case (ranks)"
    )
    parser.add_argument("--steps", type=int, default=5, help="DDP steps per hook")
    args = parser.parse_args(argv)
    if args.what == "kernels":
        return check_kernels()
    if args.what == "ranks":
        return check_ranks(args.count)
    if args.what == "table":
        return table(args.log)
    return check_ddp(args.steps)


if __name__ == "__main__":
    sys.exit(main())
