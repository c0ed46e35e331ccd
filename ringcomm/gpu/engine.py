"""Collectives on GPU buffers: the whole operation on NCCL, or staged through pinned host
memory into ringcomm's own engine.

One :class:`DeviceEngine` per communicator, made at its first operation on a device
buffer. Which path runs is decided once, collectively, at that operation: every rank
publishes whether it has NCCL and which GPU it holds (host + PCI bus id); NCCL is chosen
(``RINGCOMM_GPU_PATH=auto``) when every rank has it and no two ranks share a GPU, which
NCCL refuses. ``RINGCOMM_GPU_PATH=nccl`` or ``staging`` forces a path.

Stream semantics, both paths: an operation first waits for the work the caller had queued
on its current stream when it made the call (an event recorded then), runs on ringcomm's
own streams, and is complete when the call (or ``Work.wait``) returns: the result is in the
buffer for every stream and the host alike.

Staging copies each device buffer the operation reads into pinned host memory, runs the
host algorithm on it, and copies the outputs back. all_reduce, broadcast and reduce go
chunk by chunk (``Config.gpu_chunk_bytes``): the copy of chunk k+1 to the host and of chunk
k-1 back run on two copy streams while chunk k is on the wire.

On NCCL, ops it lacks run staged instead: BAND/BOR/BXOR, and reductions over bool, int16
and uint16. AVG on float16/bfloat16 divides first (a device kernel) and sums, so partial
sums cannot overflow; other floats use NCCL's own average. Point-to-point send/recv is
always staged: ringcomm's send never waits for its receiver and matches by tag, NCCL's
does neither.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ringcomm import hosts, native
from ringcomm.algorithms import records, tree
from ringcomm.algorithms.context import OpContext
from ringcomm.algorithms.schedule import segment_bounds
from ringcomm.config import Config
from ringcomm.errors import CommTimeoutError, RingcommError, TransportError
from ringcomm.gpu.intake import DeviceBuffer, cupy_module
from ringcomm.logs import get_logger
from ringcomm.native import cuda as kernels

log = get_logger(__name__)

# Host bodies that may run chunk by chunk: elementwise over one buffer.
CHUNKED_OPS = ("all_reduce", "broadcast", "reduce")
REDUCING_OPS = ("all_reduce", "reduce", "reduce_scatter")
_RECORD_BYTES = 256
_NCCL_UNSUPPORTED_REDUCE = ("bool", "int16", "uint16")


def _nccl_module() -> Any | None:
    try:
        from cupy.cuda import nccl
    except ImportError:
        return None
    return nccl if getattr(nccl, "available", False) else None


class NcclComm:
    """One NCCL communicator, its stream, and the calls ringcomm makes on it."""

    def __init__(self, nccl: Any, cupy: Any, comm: Any, size: int, rank: int) -> None:
        self.nccl, self.cupy, self.comm = nccl, cupy, comm
        self.size, self.rank = size, rank
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._types = {
            "int8": nccl.NCCL_INT8,
            "uint8": nccl.NCCL_UINT8,
            "bool": nccl.NCCL_UINT8,
            "int32": nccl.NCCL_INT32,
            "uint32": nccl.NCCL_UINT32,
            "int64": nccl.NCCL_INT64,
            "uint64": nccl.NCCL_UINT64,
            "float16": nccl.NCCL_FLOAT16,
            "bfloat16": nccl.NCCL_BFLOAT16,
            "float32": nccl.NCCL_FLOAT32,
            "float64": nccl.NCCL_FLOAT64,
        }
        self._ops = {
            native.SUM: nccl.NCCL_SUM,
            native.PROD: nccl.NCCL_PROD,
            native.MIN: nccl.NCCL_MIN,
            native.MAX: nccl.NCCL_MAX,
            native.AVG: nccl.NCCL_AVG,
        }

    def supports_reduce(self, dtype_name: str, op: int) -> bool:
        return op in self._ops and dtype_name not in _NCCL_UNSUPPORTED_REDUCE

    def all_reduce(self, b: DeviceBuffer, op: int) -> None:
        ncop = self._ops[op]
        if op == native.AVG and b.half is not None:
            # Divide first: a float16 partial sum of n large values could overflow.
            kernels.scale(b.device, 1.0 / self.size, b.half, self.stream)
            ncop = self.nccl.NCCL_SUM
        dt = self._types[b.dtype_name]
        self.comm.allReduce(b.addr, b.addr, b.count, dt, ncop, self.stream.ptr)

    def _sum_then_divide(self, op: int, b: DeviceBuffer) -> bool:
        # AVG on 16-bit floats where the input must stay as it was: sum, divide the result.
        return op == native.AVG and b.half is not None

    def reduce(self, b: DeviceBuffer, root: int, op: int) -> None:
        post = self._sum_then_divide(op, b)
        ncop = self.nccl.NCCL_SUM if post else self._ops[op]
        dt = self._types[b.dtype_name]
        self.comm.reduce(b.addr, b.addr, b.count, dt, ncop, root, self.stream.ptr)
        if post and self.rank == root:
            kernels.scale(b.device, 1.0 / self.size, b.half, self.stream)

    def reduce_scatter(self, out: DeviceBuffer, inp: DeviceBuffer, op: int) -> None:
        # AVG: sum, then divide with ringcomm's kernel. NCCL 2.28.9's own average gave wrong
        # values here (n=1, float32, 786,449 elements per rank; see bench/gpu_check.sh).
        post = op == native.AVG
        ncop = self.nccl.NCCL_SUM if post else self._ops[op]
        dt = self._types[out.dtype_name]
        self.comm.reduceScatter(inp.addr, out.addr, out.count, dt, ncop, self.stream.ptr)
        if post:
            kernels.scale(out.device, 1.0 / self.size, out.half, self.stream)

    def broadcast(self, b: DeviceBuffer, root: int) -> None:
        self.comm.bcast(b.addr, b.nbytes, self.nccl.NCCL_UINT8, root, self.stream.ptr)

    def all_gather(self, out: DeviceBuffer, inp: DeviceBuffer) -> None:
        self.comm.allGather(inp.addr, out.addr, inp.nbytes, self.nccl.NCCL_UINT8, self.stream.ptr)

    def _grouped(
        self, sends: Sequence[tuple[int, int, int]], recvs: Sequence[tuple[int, int, int]]
    ) -> None:
        u8 = self.nccl.NCCL_UINT8
        self.nccl.groupStart()
        try:
            for addr, nbytes, peer in sends:
                self.comm.send(addr, nbytes, u8, peer, self.stream.ptr)
            for addr, nbytes, peer in recvs:
                self.comm.recv(addr, nbytes, u8, peer, self.stream.ptr)
        finally:
            self.nccl.groupEnd()

    def gather(self, out: DeviceBuffer | None, inp: DeviceBuffer, root: int) -> None:
        k = inp.nbytes
        recvs = [(out.addr + r * k, k, r) for r in range(self.size)] if out is not None else []
        self._grouped([(inp.addr, k, root)], recvs)

    def scatter(self, out: DeviceBuffer, inp: DeviceBuffer | None, root: int) -> None:
        k = out.nbytes
        sends = [(inp.addr + r * k, k, r) for r in range(self.size)] if inp is not None else []
        self._grouped(sends, [(out.addr, k, root)])

    def all_to_all(self, out: DeviceBuffer, inp: DeviceBuffer) -> None:
        k = inp.nbytes // self.size
        peers = range(self.size)
        self._grouped(
            [(inp.addr + r * k, k, r) for r in peers], [(out.addr + r * k, k, r) for r in peers]
        )

    def close(self) -> None:
        try:
            self.comm.destroy()
        except Exception as e:  # closing must not raise; an aborted comm may refuse
            log.debug("NCCL destroy: %s", e)

    def abort(self) -> None:
        try:
            self.comm.abort()
        except Exception as e:
            log.debug("NCCL abort: %s", e)


# What a collective does on NCCL, given the engine's NcclComm (None: stage it instead).
NcclBody = Callable[[NcclComm], None]


class DeviceEngine:
    """Runs a communicator's operations on device buffers (see the module docstring)."""

    def __init__(self, rank: int, size: int, config: Config) -> None:
        self.rank, self.size, self.config = rank, size, config
        self.cupy = cupy_module()
        self.path: str | None = None  # "nccl" or "staging", decided at the first operation
        self.device_id: int | None = None
        self._nccl: NcclComm | None = None
        self._d2h: Any = None
        self._h2d: Any = None

    # -- the entry point ------------------------------------------------------------------
    def run(
        self,
        ctx: OpContext,
        name: str,
        host_body: Callable[[OpContext], Any],
        buffers: Sequence[DeviceBuffer],
        nccl_body: NcclBody | None,
    ) -> Any:
        """Run one operation on ``buffers`` (its device buffers) on the chosen path."""
        device_id = buffers[0].device_id
        for b in buffers:
            if b.device_id != device_id:
                raise ValueError(f"{name}: buffers on GPUs {b.device_id} and {device_id}")
        with self.cupy.cuda.Device(device_id):
            if self.path is None:
                self._choose_path(ctx, device_id)
            elif device_id != self.device_id:
                raise ValueError(
                    f"{name}: this communicator runs on GPU {self.device_id}, got a buffer "
                    f"on GPU {device_id}; use one GPU per rank"
                )
            nc = self._nccl
            if (
                nc is not None
                and nccl_body is not None
                and (name not in REDUCING_OPS or nc.supports_reduce(buffers[0].dtype_name, ctx.op))
            ):
                return self._run_nccl(ctx, name, buffers, nccl_body)
            return self._run_staged(ctx, name, host_body, buffers)

    # -- choosing the path ------------------------------------------------------------------
    def _choose_path(self, ctx: OpContext, device_id: int) -> None:
        nccl = _nccl_module()
        bus = self.cupy.cuda.Device(device_id).pci_bus_id
        machine = hosts.boot_id() or os.uname().nodename
        mine = f"{int(nccl is not None)}|{machine}|{bus}"[:_RECORD_BYTES]
        rows = records.allgather_text(ctx, mine, _RECORD_BYTES)
        have_nccl = [row.split("|", 1)[0] == "1" for row in rows]
        gpus = [row.split("|", 1)[1] for row in rows]
        shared = sorted({g for g in gpus if gpus.count(g) > 1})
        wanted = self.config.gpu_path
        if wanted == "nccl":
            missing = [r for r, ok in enumerate(have_nccl) if not ok]
            if missing:
                raise RingcommError(f"RINGCOMM_GPU_PATH=nccl but ranks {missing} have no NCCL")
            if shared:
                ranks = [r for r, g in enumerate(gpus) if g in shared]
                raise RingcommError(
                    f"RINGCOMM_GPU_PATH=nccl but ranks {ranks} share a GPU, which NCCL refuses; "
                    "use RINGCOMM_GPU_PATH=staging or one GPU per rank"
                )
        use_nccl = wanted == "nccl" or (wanted == "auto" and all(have_nccl) and not shared)
        self.device_id = device_id
        self._d2h = self.cupy.cuda.Stream(non_blocking=True)
        self._h2d = self.cupy.cuda.Stream(non_blocking=True)
        if use_nccl:
            assert nccl is not None
            self._nccl = self._connect_nccl(ctx, nccl)
        self.path = "nccl" if use_nccl else "staging"
        log.debug("rank %d: GPU %d (%s), path %s", self.rank, device_id, bus, self.path)

    def _connect_nccl(self, ctx: OpContext, nccl: Any) -> NcclComm:
        # The unique id travels over this communicator (works after split and under MPI).
        # CuPy 14 gives and takes it as bytes, earlier CuPy as a tuple of signed chars.
        as_bytes = int(self.cupy.__version__.split(".")[0]) >= 14
        uid = np.zeros(128, np.int8)
        if self.rank == 0:
            raw = nccl.get_unique_id()
            uid[:] = np.frombuffer(raw, np.int8) if as_bytes else raw
        tree.broadcast_binomial(ctx, uid, 0)
        comm_id = uid.tobytes() if as_bytes else tuple(int(x) for x in uid)
        made: list[Any] = []
        failed: list[BaseException] = []

        def init() -> None:  # ncclCommInitRank blocks until every rank has joined
            try:
                made.append(nccl.NcclCommunicator(self.size, comm_id, self.rank))
            except BaseException as e:
                failed.append(e)

        t = threading.Thread(target=init, name=f"ringcomm-nccl-init-{self.rank}", daemon=True)
        t.start()
        while t.is_alive() and time.monotonic() < ctx.deadline and not ctx.transport.aborted:
            t.join(min(0.2, max(0.0, ctx.deadline - time.monotonic())))
        if ctx.transport.aborted and not made and not failed:
            raise ctx.transport.closed_error()
        if failed:
            raise TransportError(f"rank {self.rank}: NCCL init failed: {failed[0]}")
        if not made:
            raise CommTimeoutError(f"rank {self.rank}: NCCL init did not finish before the timeout")
        return NcclComm(nccl, self.cupy, made[0], self.size, self.rank)

    # -- NCCL ---------------------------------------------------------------------------------
    def _run_nccl(
        self, ctx: OpContext, name: str, buffers: Sequence[DeviceBuffer], body: NcclBody
    ) -> None:
        nc = self._nccl
        assert nc is not None
        for b in buffers:
            nc.stream.wait_event(b.ready)
        body(nc)
        self._wait(nc.stream, ctx, f"{name} on NCCL", nc)

    # -- staging ------------------------------------------------------------------------------
    def _pinned(self, b: DeviceBuffer) -> np.ndarray:
        mem = self.cupy.cuda.alloc_pinned_memory(max(1, b.nbytes))
        return np.frombuffer(mem, b.device.dtype, b.count)

    def _copy(self, dst: int, src: int, nbytes: int, kind: int, stream: Any) -> None:
        if nbytes:
            self.cupy.cuda.runtime.memcpyAsync(dst, src, nbytes, kind, stream.ptr)

    def _run_staged(
        self,
        ctx: OpContext,
        name: str,
        host_body: Callable[[OpContext], Any],
        buffers: Sequence[DeviceBuffer],
    ) -> Any:
        rt = self.cupy.cuda.runtime
        d2h, h2d = self._d2h, self._h2d
        for b in buffers:
            d2h.wait_event(b.ready)
            h2d.wait_event(b.ready)
            b.array = self._pinned(b)
        try:
            if name in CHUNKED_OPS and len(buffers) == 1:
                return self._run_chunked(ctx, name, host_body, buffers[0])
            for b in buffers:
                if b.read:
                    self._copy(b.array.ctypes.data, b.addr, b.nbytes, rt.memcpyDeviceToHost, d2h)
            self._wait(d2h, ctx, f"{name}: copy to the host")
            result = host_body(ctx)
            for b in buffers:
                if b.write:
                    self._copy(b.addr, b.array.ctypes.data, b.nbytes, rt.memcpyHostToDevice, h2d)
            self._wait(h2d, ctx, f"{name}: copy to the GPU")
            return result
        finally:
            for b in buffers:
                b.array = None  # the pinned block goes back to CuPy's pool

    def _run_chunked(
        self, ctx: OpContext, name: str, host_body: Callable[[OpContext], Any], b: DeviceBuffer
    ) -> None:
        rt = self.cupy.cuda.runtime
        host = b.array
        assert host is not None
        item = host.itemsize
        chunks = segment_bounds(0, b.count, max(1, self.config.gpu_chunk_bytes // item))
        arrived = []
        if b.read:
            for lo, hi in chunks:
                self._copy(
                    host.ctypes.data + lo * item,
                    b.addr + lo * item,
                    (hi - lo) * item,
                    rt.memcpyDeviceToHost,
                    self._d2h,
                )
                ev = self.cupy.cuda.Event(block=False, disable_timing=True)
                ev.record(self._d2h)
                arrived.append(ev)
        for k, (lo, hi) in enumerate(chunks):
            if arrived:
                self._wait(arrived[k], ctx, f"{name}: copy to the host")
            b.array = host[lo:hi]  # the host body reads b.array when it runs
            host_body(ctx)
            if b.write:
                self._copy(
                    b.addr + lo * item,
                    host.ctypes.data + lo * item,
                    (hi - lo) * item,
                    rt.memcpyHostToDevice,
                    self._h2d,
                )
        b.array = host
        self._wait(self._h2d, ctx, f"{name}: copy to the GPU")

    # -- waiting ------------------------------------------------------------------------------
    def _wait(self, what: Any, ctx: OpContext, label: str, nc: NcclComm | None = None) -> None:
        """Wait for a stream's queued work (or an event) until the operation's deadline.

        Polls: CUDA's own waits cannot time out, and a peer that died mid-NCCL-call would
        hold them for ever. On NCCL, an asynchronous NCCL error or the deadline aborts the
        NCCL communicator, which frees the stream.
        """
        pause = 0.0
        transport = ctx.transport
        while not what.done:
            if transport.aborted:  # abort() or a bounded close(): free the stream and go
                if nc is not None:
                    nc.abort()
                raise transport.closed_error()
            if nc is not None:
                try:
                    nc.comm.check_async_error()
                except Exception as e:
                    nc.abort()
                    raise TransportError(f"rank {self.rank}: {label}: NCCL failed: {e}") from e
            if time.monotonic() > ctx.deadline:
                if nc is not None:
                    nc.abort()
                raise CommTimeoutError(
                    f"rank {self.rank}: {label} did not finish before the timeout"
                )
            time.sleep(pause)
            pause = min(1e-3, pause * 2 + 5e-6)

    def close(self) -> None:
        if self._nccl is not None:
            self._nccl.close()
            self._nccl = None
