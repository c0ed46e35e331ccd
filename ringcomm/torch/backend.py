"""The "ringcomm" torch.distributed backend: a Python ``dist.ProcessGroup`` on ringcomm.

``import ringcomm.torch`` registers it, so ``dist.init_process_group("ringcomm")`` (with
torchrun or any ``init_method``) builds one per group; torch's own store carries the
rendezvous. Operations run asynchronously on ringcomm's progress thread and return c10d
``Work`` objects whose ``wait()`` and ``get_future()`` follow them.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import torch
import torch.distributed as dist

import ringcomm
from ringcomm import config as _config
from ringcomm.communicator import Communicator
from ringcomm.errors import RendezvousError
from ringcomm.rendezvous import form_world
from ringcomm.rendezvous.store import Store
from ringcomm.torch._futures import c10d_work, cuda_devices

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


def _even_splits(name: str, tensor: torch.Tensor, splits: list[int], size: int) -> None:
    """Refuse split sizes the backend cannot serve: anything but ``size`` equal splits that
    cover ``tensor``'s rows (unequal splits are not supported yet)."""
    if not splits:
        return
    rows = tensor.shape[0] if tensor.dim() else 1
    even = [rows // size] * size
    if rows % size or list(splits) != even:
        raise ValueError(
            f"all_to_all_single: the ringcomm backend needs {size} equal splits of the "
            f"{name}'s {rows} rows ({even if rows % size == 0 else 'not divisible'}), got "
            f"{list(splits)}"
        )


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

    def getBackendName(self) -> str:
        return BACKEND_NAME

    # -- collectives -------------------------------------------------------------------------
    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        t = _one(tensors, "allreduce")
        op = _reduce_op(opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
        work = self.comm.all_reduce(t, op, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, lambda: tensors, cuda_devices(t))

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

    def allgather_into_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> dist.Work:
        return self._allgather_base(_one(outputs, "all_gather"), _one(inputs, "all_gather"), opts)

    def allgather(
        self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any = None
    ) -> dist.Work:
        outputs, t = _one(output_lists, "allgather"), _one(inputs, "allgather")
        if len(outputs) != self.comm.size:
            raise ValueError(f"allgather: {len(outputs)} outputs for {self.comm.size} ranks")
        flat = torch.empty((self.comm.size, *t.shape), dtype=t.dtype, device=t.device)
        src = t.contiguous()

        def scatter_out() -> list[list[torch.Tensor]]:
            for out, part in zip(outputs, flat, strict=True):
                out.copy_(part)
            return output_lists

        work = self.comm.all_gather(flat, src, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, scatter_out, cuda_devices(t))

    def _reduce_scatter_base(
        self, output: torch.Tensor, input: torch.Tensor, opts: Any
    ) -> dist.Work:
        op = _reduce_op(opts.reduceOp)
        work = self.comm.reduce_scatter(output, input, op, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, lambda: [output], cuda_devices(output))

    def reduce_scatter_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any
    ) -> dist.Work:
        return self._reduce_scatter_base(
            _one(outputs, "reduce_scatter"), _one(inputs, "reduce_scatter"), opts
        )

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
        _even_splits("output", output, output_split_sizes, self.comm.size)
        _even_splits("input", input, input_split_sizes, self.comm.size)
        work = self.comm.all_to_all(output, input, async_op=True, timeout=_timeout(opts))
        return c10d_work(work, lambda: [output], cuda_devices(output))

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
        t = _one(tensors, "recv")
        return c10d_work(
            self.comm.recv(t, src, tag, async_op=True), lambda: tensors, cuda_devices(t)
        )

    def shutdown(self) -> None:
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
