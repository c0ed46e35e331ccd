"""Run by every rank of ``mpiexec -n N python tests/ranks/mpi.py CHECK`` (see test_mpi.py).

Each check prints ``PASS rank R CHECK`` on success; an uncaught error aborts the job through
ringcomm's MPI abort hook, after the traceback (tagged with the rank by ``mpiexec -l``).
``DUMP_AFTER=S`` makes every rank print all its threads' stacks and exit after S seconds, so
a hung job still says where each rank was.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ringcomm
from ranks import collectives


def suite(comm: ringcomm.Communicator) -> None:
    """The collective test suite, as the process pools run it."""
    collectives.allreduce_matrix(
        comm, ("ring", "recursive_doubling", "rabenseifner", "star"), counts=(0, 1, 13, 4099)
    )
    collectives.other_collectives(comm, counts=(0, 1, 7, 1000))
    collectives.object_collectives(comm)
    collectives.vector_collectives(comm)
    collectives.grouped_operations(comm)
    collectives.any_source_receives(comm)
    collectives.async_ops_in_flight(comm)
    collectives.p2p_size_mismatch_is_refused(comm)
    if comm.size >= 2:
        collectives.subcommunicators_concurrently(comm)
        share = collectives.idle_rank_burns_no_cpu(comm)
        assert share < 0.2, f"rank 0 used {share:.0%} of a core waiting for rank 1"
    # several segments per chunk, zero-copy sends, every algorithm
    for alg in ("ring", "recursive_doubling", "rabenseifner", "star"):
        buf = (np.arange(3 << 20, dtype=np.float32) % 1000) + comm.rank
        comm.all_reduce(buf, algorithm=alg)
        n = comm.size
        want = (np.arange(3 << 20, dtype=np.float32) % 1000) * n + n * (n - 1) / 2
        np.testing.assert_array_equal(buf, want, err_msg=alg)
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        collectives.torch_tensors(comm)


def huge(comm: ringcomm.Communicator) -> None:
    """More than 2**31 bytes and elements in one all_reduce, broadcast and send/recv."""
    count = (1 << 31) + 77
    r, n = comm.rank, comm.size
    buf = np.full(count, r + 1, np.int8)
    comm.all_reduce(buf)
    assert buf[0] == buf[-1] == n * (n + 1) // 2 and np.all(buf == n * (n + 1) // 2)
    if r == 0:
        buf[-5:] = np.arange(5, dtype=np.int8) + 40
    comm.broadcast(buf, 0)
    assert list(buf[-5:]) == [40, 41, 42, 43, 44] and buf[0] == n * (n + 1) // 2
    if n >= 2 and r < 2:
        if r == 0:
            buf[:3] = (7, 8, 9)
            comm.send(buf, 1, tag=3)
        else:
            buf[:] = 0
            comm.recv(buf, 0, tag=3)
            assert list(buf[:3]) == [7, 8, 9] and list(buf[-5:]) == [40, 41, 42, 43, 44]
    del buf
    comm.barrier()


def uncaught(comm: ringcomm.Communicator) -> None:
    """The last rank raises while the others wait in an all_reduce: the job must end."""
    if comm.rank == comm.size - 1:
        time.sleep(0.5)
        raise RuntimeError("boom on purpose")
    comm.all_reduce(np.ones(4, np.float32))
    raise AssertionError("an all_reduce finished without the rank that raised")


CHECKS = {"suite": suite, "huge": huge, "uncaught": uncaught}


def main() -> None:
    check = sys.argv[1]
    if os.environ.get("DUMP_AFTER"):
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["DUMP_AFTER"]), exit=True)
    comm = ringcomm.init(timeout=float(os.environ.get("MPI_RANKS_TIMEOUT", "120")))
    assert comm.transport == os.environ["EXPECT_TRANSPORT"], comm.transport
    CHECKS[check](comm)
    print(f"PASS rank {comm.rank} {check} {comm.transport}", flush=True)
    comm.close()


if __name__ == "__main__":
    main()
