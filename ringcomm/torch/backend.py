"""The "ringcomm" torch.distributed backend: a Python ``dist.ProcessGroup`` on ringcomm.

``import ringcomm.torch`` registers it, so ``dist.init_process_group("ringcomm")`` (with
torchrun or any ``init_method``) builds one per group; torch's own store carries the
rendezvous. Operations run asynchronously on ringcomm's progress thread and return c10d
``Work`` objects whose ``wait()`` and ``get_future()`` follow them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

import ringcomm
from ringcomm import config as _config
from ringcomm.communicator import Communicator
from ringcomm.errors import RendezvousError
from ringcomm.rendezvous import form_world
from ringcomm.rendezvous.store import Store
from ringcomm.torch._futures import (
    DeferredWork,
    backend_error,
    c10d_work,
    cuda_devices,
    settle_from,
)

BACKEND_NAME = "ringcomm"

_REDUCE_OPS = {
    dist.ReduceOp.SUM: ringcomm.SUM,
    dist.ReduceOp.PRODUCT: ringcomm.PROD,
    dist.ReduceOp.MIN: ringcomm.MIN,
    dist.ReduceOp.MAX: ringcomm.MAX,
    dist.ReduceOp.AVG: ringcomm.AVG,
    dist.ReduceOp.BAND: ringcomm.BAND,
    dist.ReduceOp.BOR: ringcomm.BOR,
    dist.ReduceOp.BXOR: ringcomm.BXOR,
}


class TorchStore(Store):
    """ringcomm's rendezvous :class:`~ringcomm.rendezvous.store.Store` over a c10d store."""

    def __init__(self, store: dist.Store) -> None:
        self._store = store

    def set(self, key: str, value: bytes) -> None:
        self._store.set(key, value)

    def get(self, key: str, timeout: float) -> bytes:
        try:
            self._store.wait([key], datetime.timedelta(seconds=timeout))
        except RuntimeError as e:  # c10d reports its timeouts as RuntimeError/DistStoreError
            raise RendezvousError(
                f"torch store: {key!r} not set within {timeout:.0f}s: {e}"
            ) from None
        return bytes(self._store.get(key))

    def add(self, key: str, amount: int) -> int:
        return int(self._store.add(key, amount))


def init_from_store(
    store: dist.Store, rank: int, size: int, timeout: float | None = None
) -> Communicator:
    """A ringcomm communicator whose rendezvous goes through a torch.distributed store
    (pass a ``dist.PrefixStore`` if the store serves anything else)."""
    spec = _config.world_from(rank, size, None, None, None)
    launched = _config.mpi_launch()
    if spec.transport == "mpi" or (
        launched is not None and not _config.env_value("RINGCOMM_TRANSPORT")
    ):
        # The MPI transport is MPI_COMM_WORLD: right for a group that is the whole MPI
        # world in MPI's rank order, and for nothing else (then shared memory and sockets,
        # through the store).
        whole = launched is not None and (launched[0], launched[1]) == (rank, size)
        spec = dataclasses.replace(spec, transport="mpi" if whole else "auto")
    cfg = _config.Config.from_env()
    if timeout is not None:
        cfg = dataclasses.replace(cfg, timeout_seconds=timeout)
    world, endpoints = form_world(spec, cfg, TorchStore(store))
    return Communicator(world, cfg, endpoints)


_hook_comms = 0


def communicator(group: dist.ProcessGroup | None = None) -> Communicator:
    """A ringcomm communicator over the ranks of ``group`` (default: the world), for the
    DDP hooks; collective over the group. Rendezvous through the default group's store, so
    nothing beyond what ``init_process_group`` was given is needed."""
    global _hook_comms
    from torch.distributed import distributed_c10d as c10d

    _hook_comms += 1
    prefix = f"ringcomm-hook-{_hook_comms}/"
    store = dist.PrefixStore(prefix, c10d._get_default_store())
    return init_from_store(store, dist.get_rank(group), dist.get_world_size(group))


def _reduce_op(op: Any) -> ringcomm.ReduceOp:
    try:
        return _REDUCE_OPS[getattr(op, "op", op)]  # a ReduceOp object or its RedOpType
    except (KeyError, TypeError):
        raise ValueError(f"the ringcomm backend does not support {op}") from None


def _timeout(opts: Any) -> float | None:
    """The per-call timeout of torch's options in seconds, or None where it is unset (torch
    leaves a negative one): ringcomm's then applies, which the group was made with."""
    limit = getattr(opts, "timeout", None)
    if limit is None or limit.total_seconds() <= 0:
        return None
    return limit.total_seconds()


def _split_counts(
    name: str, tensor: torch.Tensor, splits: list[int], size: int
) -> list[int] | None:
    """Element counts per rank of ``tensor`` cut by rows as ``splits`` (torch's split
    sizes); None where ``splits`` is empty (equal splits)."""
    if not splits:
        return None
    rows = tensor.shape[0] if tensor.dim() else 1
    if len(splits) != size or sum(splits) != rows:
        raise ValueError(
            f"all_to_all_single: {name} split sizes {list(splits)} must be {size} row counts "
            f"summing to the {name}'s {rows} rows"
        )
    per_row = tensor.numel() // rows if rows else 0
    return [int(k) * per_row for k in splits]


def _one(tensors: list[torch.Tensor], what: str) -> torch.Tensor:
    if len(tensors) != 1:
        raise ValueError(
            f"{what}: the ringcomm backend takes one tensor per call, got {len(tensors)}"
        )
    return tensors[0]


class ProcessGroupRingcomm(dist.ProcessGroup):
    """A torch.distributed process group whose collectives are ringcomm's."""

    def __init__(self, comm: Communicator) -> None:
        super().__init__(comm.rank, comm.size)
        self.comm = comm
        # (tensor, src or None, tag, future, work) of receives not issued yet: see recv()
        self._deferred_recvs: list[
            tuple[torch.Tensor, int | None, int, torch.futures.Future[Any], DeferredWork]
        ] = []
        self._recv_lock = threading.Lock()

    def getBackendName(self) -> str:
        return BACKEND_NAME

    # torch names the group after making it (``_set_group_name``) and reads ``group_name``
    # back from Python (destroy_process_group); the C++ base keeps neither for a group
    # made in Python, so they are kept here.
    def _set_group_name(self, name: str) -> None:
        self._group_name = name

    @property
    def group_name(self) -> str:
        return getattr(self, "_group_name", "")

    # -- collectives -------------------------------------------------------------------------
    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        t = _one(tensors, "allreduce")
        op = _reduce_op(opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
        if t.is_sparse:
            return self._sparse_allreduce(t, op, opts)
        work = self.comm.all_reduce(t, op, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, lambda: tensors, cuda_devices(t))

    def _sparse_allreduce(self, t: torch.Tensor, op: ringcomm.ReduceOp, opts: Any) -> dist.Work:
        """SUM of sparse COO tensors, as gloo has it: every rank's indices and values are
        gathered (``all_gatherv``, after the counts) and summed; ``t`` takes the result in
        place. Runs before it returns (the Work it gives back is done)."""
        if op != ringcomm.SUM:
            raise ValueError(f"allreduce: the ringcomm backend sums sparse tensors only, not {op}")
        n, timeout = self.comm.size, _timeout(opts)
        mine = t.coalesce()
        indices = mine.indices().t().contiguous()  # (nnz, sparse dims): one row per entry
        values = mine.values().contiguous()  # (nnz, *dense shape)
        nnz = torch.full((1,), indices.shape[0], dtype=torch.int64)
        counts = torch.empty(n, dtype=torch.int64)
        self.comm.all_gather(counts, nnz, timeout=timeout)
        rows = counts.tolist()
        index_width, value_width = indices.shape[1], values.shape[1:].numel()
        all_indices = torch.empty((sum(rows), index_width), dtype=indices.dtype)
        all_values = torch.empty((sum(rows), *values.shape[1:]), dtype=values.dtype)
        with self.comm.group(timeout=timeout):
            self.comm.all_gatherv(all_indices, indices, [k * index_width for k in rows])
            self.comm.all_gatherv(all_values, values, [k * value_width for k in rows])
        total = torch.sparse_coo_tensor(all_indices.t(), all_values, t.shape).coalesce()
        t.copy_(total)
        done = concurrent.futures.Future()
        done.set_result(None)
        return c10d_work(ringcomm.Work(done, "sparse allreduce", ()), lambda: [t])

    def broadcast(self, tensors: list[torch.Tensor], opts: Any) -> dist.Work:
        t = _one(tensors, "broadcast")
        work = self.comm.broadcast(t, opts.rootRank, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, lambda: tensors, cuda_devices(t))

    def reduce(self, tensors: list[torch.Tensor], opts: Any) -> dist.Work:
        t = _one(tensors, "reduce")
        op = _reduce_op(opts.reduceOp)
        work = self.comm.reduce(t, opts.rootRank, op, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, lambda: tensors, cuda_devices(t))

    def _allgather_base(
        self, output: torch.Tensor, input: torch.Tensor, opts: Any = None
    ) -> dist.Work:
        work = self.comm.all_gather(output, input, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, lambda: [output], cuda_devices(output))

    def allgather(
        self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any = None
    ) -> dist.Work:
        outputs, t = _one(output_lists, "allgather"), _one(inputs, "allgather")
        if len(outputs) != self.comm.size:
            raise ValueError(f"allgather: {len(outputs)} outputs for {self.comm.size} ranks")
        counts = [o.numel() for o in outputs]
        flat = torch.empty(sum(counts), dtype=t.dtype, device=t.device)
        src = t.contiguous()

        def scatter_out() -> list[list[torch.Tensor]]:
            for out, part in zip(outputs, flat.split(counts), strict=True):
                out.copy_(part.view_as(out))
            return output_lists

        if all(c == t.numel() for c in counts):
            work = self.comm.all_gather(flat, src, async_op=True, timeout=_timeout(opts))
        else:  # sizes that differ by rank, which torch allows here
            work = self.comm.all_gatherv(flat, src, counts, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, scatter_out, cuda_devices(t))

    def _reduce_scatter_base(
        self, output: torch.Tensor, input: torch.Tensor, opts: Any
    ) -> dist.Work:
        op = _reduce_op(opts.reduceOp)
        work = self.comm.reduce_scatter(output, input, op, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, lambda: [output], cuda_devices(output))

    def reduce_scatter(
        self, outputs: list[torch.Tensor], input_lists: list[list[torch.Tensor]], opts: Any
    ) -> dist.Work:
        out, parts = _one(outputs, "reduce_scatter"), _one(input_lists, "reduce_scatter")
        return self._reduce_scatter_base(out, torch.cat([p.reshape(-1) for p in parts]), opts)

    def alltoall_base(
        self,
        output: torch.Tensor,
        input: torch.Tensor,
        output_split_sizes: list[int],
        input_split_sizes: list[int],
        opts: Any = None,
    ) -> dist.Work:
        n = self.comm.size
        recv = _split_counts("output", output, output_split_sizes, n)
        send = _split_counts("input", input, input_split_sizes, n)
        if recv is None and send is None:
            work = self.comm.all_to_all(output, input, async_op=True, timeout=_timeout(opts))
        else:
            recv = recv or [output.numel() // n] * n
            send = send or [input.numel() // n] * n
            work = self.comm.all_to_allv(
                output, input, send, recv, async_op=True, timeout=_timeout(opts)
            )
        return c10d_work(work, lambda: [output], cuda_devices(output))

    def alltoall(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> dist.Work:
        send = [t.numel() for t in inputs]
        recv = [t.numel() for t in outputs]
        flat_in = torch.cat([t.reshape(-1) for t in inputs])
        flat_out = torch.empty(sum(recv), dtype=flat_in.dtype, device=flat_in.device)

        def unpack() -> list[torch.Tensor]:
            for out, part in zip(outputs, flat_out.split(recv), strict=True):
                out.copy_(part.view_as(out))
            return outputs

        work = self.comm.all_to_allv(
            flat_out, flat_in, send, recv, async_op=True, timeout=_timeout(opts)
        )
        return c10d_work(work, unpack, cuda_devices(*inputs))

    # -- coalesced: many tensors, one fused group ---------------------------------------------
    def _group(self, issue: Callable[[], None], opts: Any) -> ringcomm.Work:
        with self.comm.group(async_op=True, timeout=_timeout(opts)) as g:
            issue()
        assert g.work is not None
        return g.work

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        op = _reduce_op(opts.reduceOp if opts is not None else dist.ReduceOp.SUM)

        def issue() -> None:
            for t in tensors:
                self.comm.all_reduce(t, op)

        return c10d_work(self._group(issue, opts), lambda: tensors, cuda_devices(*tensors))

    def allgather_into_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> dist.Work:
        def issue() -> None:
            for out, t in zip(outputs, inputs, strict=True):
                self.comm.all_gather(out, t)

        return c10d_work(self._group(issue, opts), lambda: outputs, cuda_devices(*outputs))

    def reduce_scatter_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any
    ) -> dist.Work:
        op = _reduce_op(opts.reduceOp)

        def issue() -> None:
            for out, t in zip(outputs, inputs, strict=True):
                self.comm.reduce_scatter(out, t, op)

        return c10d_work(self._group(issue, opts), lambda: outputs, cuda_devices(*outputs))

    def allgather_coalesced(
        self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any = None
    ) -> dist.Work:
        """``output_lists[q][i]`` gets rank q's ``inputs[i]`` (torch's layout)."""
        n = self.comm.size
        if len(output_lists) != n:
            raise ValueError(f"allgather_coalesced: {len(output_lists)} output lists for {n} ranks")
        flats = [torch.empty((n, t.numel()), dtype=t.dtype, device=t.device) for t in inputs]

        def issue() -> None:
            for flat, t in zip(flats, inputs, strict=True):
                self.comm.all_gather(flat, t.contiguous())

        def unpack() -> list[list[torch.Tensor]]:
            for q, outs in enumerate(output_lists):
                for out, flat in zip(outs, flats, strict=True):
                    out.copy_(flat[q].view_as(out))
            return output_lists

        return c10d_work(self._group(issue, opts), unpack, cuda_devices(*inputs))

    def gather(
        self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any
    ) -> dist.Work:
        t, root = _one(inputs, "gather").contiguous(), opts.rootRank
        flat = None
        if self.comm.rank == root:
            outs = _one(output_lists, "gather")
            flat = torch.empty((self.comm.size, t.numel()), dtype=t.dtype, device=t.device)

        def unpack() -> list[list[torch.Tensor]]:
            if flat is not None:
                for out, part in zip(outs, flat, strict=True):
                    out.copy_(part.view_as(out))
            return output_lists

        work = self.comm.gather(flat, t, root, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, unpack, cuda_devices(t))

    def scatter(
        self, outputs: list[torch.Tensor], input_lists: list[list[torch.Tensor]], opts: Any
    ) -> dist.Work:
        out, root = _one(outputs, "scatter"), opts.rootRank
        flat = None
        if self.comm.rank == root:
            flat = torch.cat([p.reshape(-1) for p in _one(input_lists, "scatter")])
        dst = (
            out
            if out.is_contiguous()
            else torch.empty_like(out, memory_format=torch.contiguous_format)
        )

        def unpack() -> list[torch.Tensor]:
            if dst is not out:
                out.copy_(dst)
            return outputs

        work = self.comm.scatter(dst, flat, root, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, unpack, cuda_devices(out))

    def monitored_barrier(self, timeout: Any = None, wait_all_ranks: bool = False) -> None:
        seconds = timeout.total_seconds() if timeout is not None else None
        if seconds is not None and seconds <= 0:
            raise RuntimeError(f"Rank {self.comm.rank} timed out in monitoredBarrier (timeout 0)")
        try:
            self.comm.monitored_barrier(seconds, wait_all_ranks=wait_all_ranks)
        except ringcomm.RingcommError as e:
            raise backend_error(e) from e

    # torch 2.13 calls these names from Python (all_gather_into_tensor, ...); older ones and
    # C++ callers use the underscored ones.
    all_gather_single = _allgather_base
    reduce_scatter_single = _reduce_scatter_base
    all_to_all_single = alltoall_base

    def barrier(self, opts: Any = None) -> dist.Work:
        return c10d_work(self.comm.barrier(async_op=True, timeout=_timeout(opts)), lambda: [])

    # -- point to point ----------------------------------------------------------------------
    def send(self, tensors: list[torch.Tensor], dst: int, tag: int) -> dist.Work:
        t = _one(tensors, "send")
        return c10d_work(
            self.comm.send(t, dst, tag, async_op=True), lambda: tensors, cuda_devices(t)
        )

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int) -> dist.Work:
        """Deferred until something waits on (or asks about) this or a later receive, then
        issued with every receive deferred before it, in order: gloo's receives never hold
        up what is issued after them (``irecv`` then ``isend`` on both ranks, torch's
        ``batch_isend_irecv`` in any order, a receive before a collective the sender runs
        first), and ringcomm's would, as they run in issue order."""
        return self._defer_recv(_one(tensors, "recv"), src, tag)

    def recv_anysource(self, tensors: list[torch.Tensor], tag: int) -> dist.Work:
        """A receive from whichever rank's message with ``tag`` comes first (``dist.recv``
        without ``src``); deferred as :meth:`recv` is."""
        return self._defer_recv(_one(tensors, "recv"), None, tag)

    def _defer_recv(self, t: torch.Tensor, src: int | None, tag: int) -> DeferredWork:
        fut: torch.futures.Future[Any] = torch.futures.Future(devices=cuda_devices(t) or None)
        work = DeferredWork(fut, self._issue_deferred_recvs)
        with self._recv_lock:
            self._deferred_recvs.append((t, src, tag, fut, work))
        return work

    def _issue_deferred_recvs(self) -> None:
        with self._recv_lock:
            pending, self._deferred_recvs = self._deferred_recvs, []
            for t, src, tag, fut, deferred in pending:
                try:
                    work = self.comm.recv(t, src, tag, async_op=True)
                except BaseException as e:
                    fut.set_exception(backend_error(e))
                    continue
                assert isinstance(work, ringcomm.Work)
                if src is None:  # its future's result is the sender
                    deferred.source = work.get_future().result
                settle_from(work, fut, lambda t=t: [t], translate=True)

    def shutdown(self) -> None:
        self._issue_deferred_recvs()
        self.comm.close()

    def __repr__(self) -> str:
        return f"<ProcessGroupRingcomm rank {self.comm.rank} of {self.comm.size}>"


def create_process_group(
    store: dist.Store, rank: int, size: int, timeout: datetime.timedelta
) -> ProcessGroupRingcomm:
    """The creator torch calls for ``init_process_group("ringcomm")`` and ``new_group``."""
    comm = init_from_store(store, rank, size, timeout.total_seconds())
    return ProcessGroupRingcomm(comm)


def register() -> None:
    """Register "ringcomm" with torch.distributed (idempotent; done on import)."""
    if BACKEND_NAME.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(BACKEND_NAME, create_process_group, devices=["cpu", "cuda"])
