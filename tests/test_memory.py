"""Memory: an in-place allreduce allocates no O(buffer) scratch, and over ZeroMQ sockets a
slow receiver holds at most about one credit window of its peers' data
(RINGCOMM_SOCKET_WINDOW_BYTES, 8 MiB), whatever the message size."""

from __future__ import annotations

import ctypes
import functools
import time

import numpy as np
import pytest

import ringcomm
from conftest import get_pool
from ringcomm.algorithms.context import OpContext

BUFFER_BYTES = 64 << 20
_LIBC = ctypes.CDLL(None)
WINDOW_MIB = 8


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _peak_extra_mib(comm: ringcomm.Communicator, slow_rank: int = -1) -> float:
    """Peak resident memory above the buffer during three 64 MiB ring allreduces; rank
    ``slow_rank`` sleeps 20 ms in every reduction, so its left neighbour's segments
    arrive far faster than it takes them."""
    buf = np.ones(BUFFER_BYTES // 4, np.float32)
    comm.all_reduce(buf, algorithm="ring")  # warm up: kernels compiled, sockets connected
    comm.barrier()
    _LIBC.malloc_trim(0)  # give back freed heap, so what piles up shows as new resident memory
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    real_reduce = OpContext.reduce
    if comm.rank == slow_rank:

        def slow_reduce(self: OpContext, out: np.ndarray, other: np.ndarray) -> None:
            time.sleep(0.02)
            real_reduce(self, out, other)

        OpContext.reduce = slow_reduce  # type: ignore[method-assign]
    try:
        for _ in range(3):
            comm.all_reduce(buf, algorithm="ring")
    finally:
        OpContext.reduce = real_reduce  # type: ignore[method-assign]
    extra = (_status_kib("VmHWM") - base) / 1024
    assert buf[0] == comm.size**4
    return extra


@pytest.mark.parametrize("transport", ["zmq", "auto"])
def test_in_place_ring_allreduce_needs_no_buffer_sized_scratch(transport: str) -> None:
    extras = get_pool(2, transport).run(_peak_extra_mib, timeout=120)
    # What remains is segments in flight (within the credit window over sockets), not a
    # 64 MiB copy.
    assert max(extras) < BUFFER_BYTES / (1 << 20) / 4, f"peak extra MiB per rank: {extras}"


def test_a_slow_receiver_holds_at_most_about_a_window_over_sockets() -> None:
    """Rank 1 reduces slowly; without flow control rank 0's whole 32 MiB chunk piled up in
    rank 1's ZeroMQ queue. The bound: the 8 MiB window, one segment in the making, and the
    frame being reduced."""
    extras = get_pool(2, "zmq").run(functools.partial(_peak_extra_mib, slow_rank=1), timeout=180)
    assert extras[1] < WINDOW_MIB + 6, f"peak extra MiB per rank: {extras}"
