"""Rank bodies for tests/test_shm.py: ``python tests/ranks/shm.py MODE`` in every rank (started by
ringcomm-run or directly with RINGCOMM_* variables). A rank that passes prints
``PASS rank <r> MODE``; results go out as ``RESULT <json>``."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
import time

# Run as a script: make tests/ importable (ranks.*, data, runners).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import ringcomm
from ringcomm.config import Config
from ringcomm.transport.shm import segment


def job_segments() -> list[str]:
    """This job's segment names still in /dev/shm."""
    return segment.job_segments(Config.from_env().job_id)


def check_ops(comm: ringcomm.Communicator) -> None:
    """Every kind of traffic: small and multi-segment, by address and through slots."""
    n, r = comm.size, comm.rank
    for count in (1, 1000, 3 << 20):
        for alg in ("ring", "recursive_doubling", "star"):
            a = (np.arange(count, dtype=np.float32) % 1000) + r
            comm.all_reduce(a, algorithm=alg)
            want = (np.arange(count, dtype=np.float32) % 1000) * n + n * (n - 1) / 2
            np.testing.assert_array_equal(a, want, err_msg=f"{alg} {count}")
        out = np.empty(count * n, np.float32)
        comm.all_gather(out, np.full(count, r, np.float32))
        np.testing.assert_array_equal(out, np.repeat(np.arange(n, dtype=np.float32), count))
        b = np.full(count, r, np.float32)
        comm.broadcast(b, n - 1)
        np.testing.assert_array_equal(b, np.full(count, n - 1, np.float32))
    # p2p around the ring, everyone sending first: sends never wait for their receiver
    right, left = (r + 1) % n, (r - 1) % n
    got = np.empty(5 << 20, np.uint8)
    comm.send(np.full(5 << 20, r, np.uint8), right, tag=3)
    comm.recv(got, left, tag=3)
    assert (got == left).all()
    # No rank closes while its last send may still be on the wire to a peer behind a slow
    # link (test_hosts.py): a send completes once its data is handed to the socket, and a
    # receiver still waiting for the last bytes of a peer whose process has ended may call
    # it lost (docs/faults.md).
    comm.barrier()


def clean(comm: ringcomm.Communicator) -> dict:
    """Nothing of ours stays in /dev/shm once connected, split, or closed."""
    assert comm.transport == "shm", comm.transport
    assert job_segments() == [], job_segments()
    check_ops(comm)
    sub = comm.split(comm.rank % 2)
    assert sub is not None and sub.transport in ("shm", "zmq")
    comm.barrier()  # the other color's sub-communicator has connected too
    assert job_segments() == [], job_segments()
    # A board's names live while it is made (at a communicator's first board collective):
    # no rank starts one before every rank has looked, nor looks while one is made.
    comm.barrier()
    check_ops(sub)
    sub.close()
    comm.barrier()
    return {"transport": comm.transport}


def mixed(comm: ringcomm.Communicator) -> dict:
    """Ranks in two /dev/shm worlds: shared memory within each, sockets across."""
    assert comm.transport == "shm+zmq", comm.transport
    check_ops(comm)
    return {"transport": comm.transport}


def mismatch(comm: ringcomm.Communicator) -> dict:
    """Ranks that disagree on the count get an error, never a hang or a partial result."""
    count = 1000 + comm.rank
    try:
        comm.all_reduce(np.ones(count, np.float32), timeout=20)
    except ringcomm.RingcommError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    raise AssertionError("an all_reduce with counts 1000 and 1001 succeeded")


def compressed_mismatch(comm: ringcomm.Communicator) -> dict:
    """A rank that exchanges its 4000 bytes as float16 against one that sends them plain
    fails on the board, as ranks that pass different sizes do."""
    data = np.ones(1000, np.float32)
    try:
        if comm.rank == 0:
            comm.all_reduce(data, compression="float16", timeout=20)
        else:
            comm.all_reduce(data, algorithm="direct", timeout=20)
    except ringcomm.RingcommError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    raise AssertionError("a compressed and a plain all_reduce of 4000 bytes succeeded")


def p2p_waits_for_nobody(comm: ringcomm.Communicator) -> dict:
    """A send returns before its receiver takes it, and the data still arrives while the
    sender's communicator sits idle (the background ticker pushes it)."""
    nbytes = 8 << 20  # 32 slots' worth: most of it must wait for free slots
    if comm.rank == 0:
        t0 = time.monotonic()
        comm.send(np.full(nbytes, 7, np.uint8), 1)
        took = time.monotonic() - t0
        time.sleep(3.0)  # idle: nothing here calls into the communicator
        return {"send_seconds": took}
    time.sleep(1.0)
    t0 = time.monotonic()
    got = np.empty(nbytes, np.uint8)
    comm.recv(got, 0, timeout=10)
    assert (got == 7).all()
    return {"recv_seconds": time.monotonic() - t0}


def ticker_error_reaches_the_next_operation(comm: ringcomm.Communicator) -> dict:
    """A queued send that the background ticker fails to push (here: a fault injected into
    the push) is not dropped in silence: the next operation on the sender raises it."""
    from ringcomm.transport.shm import slots

    nbytes = 8 << 20  # more than the slots hold: the ticker must push the rest
    if comm.rank == 0:
        real_push = slots.ShmTransport._push

        def failing_push(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if threading.current_thread().name == "ringcomm-shm-ticker":
                raise OSError("injected: the peer's segment went away")
            return real_push(self, *args, **kwargs)

        slots.ShmTransport._push = failing_push  # type: ignore[method-assign]
        try:
            # The send returns with the rest queued (or, if the ticker already failed while
            # it still pushed, raises itself: a busy machine).
            comm.send(np.full(nbytes, 7, np.uint8), 1)
            time.sleep(1.0)  # the ticker tries, and fails
            comm.barrier(timeout=5)
        except ringcomm.TransportError as e:
            assert "injected" in str(e), e
            return {"raised": str(e)}
        raise AssertionError("the ticker's failure was dropped: the barrier ran")
    time.sleep(3.0)  # the sender's barrier fails before it sends anything to us
    return {}


def peer_killed(comm: ringcomm.Communicator, count: int = 4 << 20) -> dict:
    """The last rank is killed mid-run; the others fail naming it, without hanging."""
    buf = np.ones(count, np.float32)
    for i in range(1000):
        if comm.rank == comm.size - 1 and i == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        t0 = time.monotonic()
        try:
            comm.all_reduce(buf)
        except ringcomm.PeerLostError as e:
            return {"error": str(e), "seconds": time.monotonic() - t0}
    raise AssertionError("the all_reduces went on without the killed rank")


def small_shm(comm: ringcomm.Communicator) -> dict:
    """A /dev/shm too small for the configured slots: smaller ones, everything works."""
    assert comm.transport == "shm", comm.transport
    check_ops(comm)
    return {}


def polls(comm: ringcomm.Communicator) -> dict:
    """How long this rank polls before it yields (0: it yields at once), and a board
    all_reduce run with it."""
    a = np.full(1000, comm.rank + 1.0, np.float32)
    comm.all_reduce(a)
    assert (a == comm.size * (comm.size + 1) / 2).all()
    return {"polls": comm._transport.polls}  # type: ignore[attr-defined]


def pin(mode: str) -> None:
    """Bind this rank to one core, as launchers do: a core of its own, or all to the first."""
    cores = sorted(os.sched_getaffinity(0))
    rank = int(os.environ["RINGCOMM_RANK"])
    os.sched_setaffinity(0, {cores[rank % len(cores)] if mode == "pinned_apart" else cores[0]})


MODES = {
    "clean": clean,
    "pinned_apart": polls,
    "pinned_together": polls,
    "small_shm": small_shm,
    "mixed": mixed,
    "mismatch": mismatch,
    "compressed_mismatch": compressed_mismatch,
    "p2p_waits_for_nobody": p2p_waits_for_nobody,
    "peer_killed": peer_killed,
    # 1,000 floats: the all_reduce runs on the shared-memory board
    "peer_killed_on_board": functools.partial(peer_killed, count=1000),
    "ticker_error_reaches_the_next_operation": ticker_error_reaches_the_next_operation,
}


# Modes where init must fail, and what its error must say.
INIT_MUST_FAIL = {
    "forced_across": "shares no /dev/shm",  # RINGCOMM_TRANSPORT=shm across /dev/shm worlds
    "full_shm": "--shm-size",  # /dev/shm too small for even the smallest slots
}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)  # ringcomm's warnings go to stderr
    mode = sys.argv[1]
    if mode in INIT_MUST_FAIL:
        try:
            ringcomm.init(timeout=30)
        except ringcomm.TransportError as e:
            assert INIT_MUST_FAIL[mode] in str(e), e
            print(f"PASS rank {os.environ['RINGCOMM_RANK']} {mode}", flush=True)
            return
        raise AssertionError(f"{mode}: init connected where it must fail")
    if mode == "killed_while_connecting":
        from ringcomm.transport import shm

        if os.environ["RINGCOMM_RANK"] == "1":  # dies with its segment made, not yet unlinked
            shm.ShmTransport._attach = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        ringcomm.init(timeout=30)
        return
    if mode == "killed_on_board":
        from ringcomm.transport.shm import board

        join = board.join

        def join_and_die(transport, area_bytes, agree):  # type: ignore[no-untyped-def]
            def die(value: int) -> int:  # its board file made, not yet unlinked
                os.kill(os.getpid(), signal.SIGKILL)
                return value

            return join(transport, area_bytes, die)

        if os.environ["RINGCOMM_RANK"] == "1":
            board.join = join_and_die
        comm = ringcomm.init(timeout=30)
        comm.all_reduce(np.ones(10, np.float32), timeout=20)
        return
    if mode.startswith("pinned_"):
        pin(mode)
    comm = ringcomm.init(timeout=30)
    result = MODES[mode](comm)
    comm.close()
    assert job_segments() == [], job_segments()
    print(f"RESULT {json.dumps(result)}", flush=True)
    print(f"PASS rank {comm.rank} {mode}", flush=True)


if __name__ == "__main__":
    main()
