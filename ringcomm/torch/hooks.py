"""DDP communication hooks on ringcomm, with torch's hook conventions.

A hook is ``hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]``;
``state`` is a :class:`ringcomm.Communicator` (or anything with a ``comm`` attribute
holding one). The future is completed by ringcomm's own asynchronous work, so DDP overlaps
backward with communication as it does with its built-in hooks::

    comm = ringcomm.torch.communicator()          # or ringcomm.init()
    model = DDP(model)
    model.register_comm_hook(comm, ringcomm.torch.allreduce_hook)

(No ``from __future__ import annotations`` here: DDP checks that a hook's ``bucket``
annotation *is* ``dist.GradBucket``.)
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

import ringcomm
import ringcomm.gpu
from ringcomm.logs import get_logger
from ringcomm.native import cuda as device_kernels
from ringcomm.torch._futures import cuda_devices, torch_future

Hook = Callable[[Any, dist.GradBucket], torch.futures.Future[torch.Tensor]]
log = get_logger(__name__)


def _comm(state: Any) -> ringcomm.Communicator:
    comm = state if isinstance(state, ringcomm.Communicator) else getattr(state, "comm", None)
    if not isinstance(comm, ringcomm.Communicator):
        raise TypeError(
            "the hook state must be a ringcomm.Communicator or hold one as .comm, "
            f"got {type(state).__name__}"
        )
    return comm


def allreduce_hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average the bucket's gradients over all ranks, in place.

    Where the ranks share a host's memory, the bucket's storage moves into shared memory
    on its first step (``Tensor.share_memory_()``: DDP's views of it follow), and the ranks
    then reduce straight from each other's buckets (see ``Communicator._all_reduce_mapped``).
    """
    comm = _comm(state)
    tensor = bucket.buffer()
    fd, offset = _shared_file(comm, tensor)
    work = comm._all_reduce_mapped(tensor, ringcomm.AVG, fd, offset, async_op=True)
    assert work is not None
    return torch_future(work, lambda: tensor, cuda_devices(tensor))


def _shared_file(comm: ringcomm.Communicator, tensor: torch.Tensor) -> tuple[int, int]:
    """The shared-memory file (fd, byte offset) that holds ``tensor``, its storage moved
    there first if need be; (-1, 0) where that is of no use or cannot be done."""
    if tensor.is_cuda or not getattr(comm, "_board", False) or tensor.dtype != torch.float32:
        return -1, 0
    try:
        storage = tensor.untyped_storage()
        if not storage.is_shared():
            tensor.share_memory_()  # moves the storage: every view of it follows
        fd, _ = tensor.untyped_storage()._share_fd_cpu_()
    except (RuntimeError, OSError, AttributeError) as e:  # /dev/shm full, another strategy
        log.debug("the bucket stays in private memory: %s", e)
        return -1, 0
    return int(fd), tensor.storage_offset() * tensor.element_size()


def compress_wrapper(hook: Hook, dtype: torch.dtype = torch.float16) -> Hook:
    """Wrap ``hook`` so it runs on the bucket cast to ``dtype``; the result is cast back into
    the bucket. Halves the bytes on the wire for float16/bfloat16."""

    def compressed_hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        original = bucket.buffer()
        bucket.set_buffer(original.to(dtype))
        inner = hook(state, bucket)

        def decompress(fut: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            original.copy_(fut.value())
            bucket.set_buffer(original)
            return original

        return inner.then(decompress)  # a then() future inherits the inner one's devices

    compressed_hook.__name__ = f"{getattr(hook, '__name__', 'hook')}_{dtype}".replace(".", "_")
    return compressed_hook


_HALF_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _compress_hook(
    state: Any, bucket: dist.GradBucket, dtype: torch.dtype
) -> torch.futures.Future[torch.Tensor]:
    comm = _comm(state)
    original = bucket.buffer()
    name = _HALF_NAMES[dtype]
    if original.dtype == torch.float32 and not original.is_cuda:
        # ringcomm rounds, sums (in float32) and widens as it exchanges: no 16-bit copy
        # of the bucket, and no cast passes of its own (see all_reduce's compression);
        # ranks of one host read each other's buckets, as allreduce_hook's do.
        fd, offset = _shared_file(comm, original)
        work = comm._all_reduce_mapped(
            original, ringcomm.AVG, fd, offset, async_op=True, compression=name
        )
        assert work is not None
        return torch_future(work, lambda: original)
    # Divide first: the ring keeps partial sums in the compressed dtype, where a sum of
    # n large gradients could overflow float16 before the average is taken.
    fused = original.is_cuda and original.dtype == torch.float32
    if fused:  # ringcomm's device kernels cast and divide in one pass
        compressed = torch.empty_like(original, dtype=dtype)
        src, _, _, stream = ringcomm.gpu.torch_view(original)
        dst = ringcomm.gpu.torch_view(compressed)[0]
        device_kernels.narrow(src, dst, name, 1.0 / comm.size, stream)
    else:
        compressed = original.to(dtype).div_(comm.size)
    work = comm.all_reduce(compressed, ringcomm.SUM, async_op=True)
    assert work is not None

    def decompress() -> torch.Tensor:
        if fused:  # on this thread's current stream: the one the future's users wait for
            now = ringcomm.gpu.torch_view(original)[3]
            device_kernels.widen(dst, src, name, now)
        else:
            original.copy_(compressed)
        return original

    return torch_future(work, decompress, cuda_devices(original))


def fp16_compress_hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average in float16: each rank's gradients divided by the world size and rounded to
    float16 are exchanged and summed; the sum, rounded to float16, comes back in place."""
    return _compress_hook(state, bucket, torch.float16)


def ringcomm_bf16_compress_hook(
    state: Any, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Average in bfloat16 (float32's range: no overflow, 8 bits of mantissa)."""
    return _compress_hook(state, bucket, torch.bfloat16)


# DDP refuses a hook *named* bf16_compress_hook without CUDA and NCCL (it assumes torch's
# own); ringcomm's runs anywhere, so it carries another __name__.
bf16_compress_hook = ringcomm_bf16_compress_hook
