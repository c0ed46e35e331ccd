"""A communicator's lifetime is bounded: close() and interpreter exit never wait longer than
RINGCOMM_CLOSE_TIMEOUT_SECONDS for stuck operations, and a completion callback cannot
deadlock its own progress thread."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

import ringcomm


def _pair(timeout: float = 60) -> list[ringcomm.Communicator]:
    """Two thread ranks of one world over the local transport."""
    port = int(uuid.uuid4().int % 50000) + 10000  # a key of the in-process store, not a port
    comms: list[ringcomm.Communicator | None] = [None, None]

    def join(r: int) -> None:
        comms[r] = ringcomm.init(
            rank=r, size=2, transport="local", master_port=port, timeout=timeout
        )

    threads = [threading.Thread(target=join, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(c is not None for c in comms), "the thread world did not form"
    return comms  # type: ignore[return-value]


def test_close_fails_a_stuck_operation_and_returns_within_its_bound() -> None:
    c0, c1 = _pair(timeout=60)
    try:
        work = c0.all_reduce(np.ones(10), async_op=True)  # rank 1 never joins
        queued = c0.barrier(async_op=True)
        t0 = time.monotonic()
        c0.close(timeout=1.0)
        took = time.monotonic() - t0
        assert took < 5, f"close() took {took:.1f} s with a 1 s bound"
        for w in (work, queued):
            with pytest.raises(ringcomm.CommClosedError, match="close"):
                w.wait(5)
    finally:
        c1.close(timeout=1.0)


def test_interpreter_exit_is_bounded_by_the_close_timeout() -> None:
    script = (
        "import threading, numpy as np, ringcomm\n"
        "comms = [None, None]\n"
        "def join(r): comms[r] = ringcomm.init(rank=r, size=2, transport='local',"
        " master_port=7, timeout=120)\n"
        "ts = [threading.Thread(target=join, args=(r,)) for r in range(2)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "comms[0].all_reduce(np.ones(10), async_op=True)  # never completes\n"
        "print('exiting', flush=True)\n"
    )
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", script],
        env={**__import__("os").environ, "RINGCOMM_CLOSE_TIMEOUT_SECONDS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - t0
    assert "exiting" in res.stdout, res.stderr
    assert took < 20, f"the process took {took:.0f} s to exit (operation timeout 120 s)"


def test_a_blocking_call_in_a_completion_callback_is_a_clear_error() -> None:
    with ringcomm.init(rank=0, size=1, transport="local", master_port=8) as comm:
        seen: list[BaseException] = []
        first = comm.barrier(async_op=True)

        def callback(_: object) -> None:
            try:
                comm.all_reduce(np.ones(4))  # blocking, on the progress thread
            except BaseException as e:
                seen.append(e)
            try:
                later.wait()  # an operation queued behind this one: would wait forever
            except BaseException as e:
                seen.append(e)

        later = comm.barrier(async_op=True)
        first.get_future().add_done_callback(callback)
        later.wait(10)
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(seen) == 2, seen
        assert all(isinstance(e, ringcomm.RingcommError) for e in seen), seen
        assert "callback" in str(seen[0]) and "callback" in str(seen[1])


_LEAVES_NOTHING = """
import os, sys, threading, numpy as np, ringcomm
from ringcomm.transport import heap, zmq_context

def ours():
    '''Threads of ringcomm's (Python ones, and ZeroMQ's I/O and reaper threads).'''
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # a thread that ended since the listing
            pass
    zmq_threads = [n for n in names if n.startswith("ZMQbg")]
    return zmq_threads + [t.name for t in threading.enumerate() if t.name != "MainThread"]

assert ours() == [], ours()
for transport in ("zmq", "auto", "local"):
    comm = ringcomm.init(rank=0, size=1, transport=transport, master_port=9)
    sub = comm.split(color=0)
    x = np.ones(1 << 20, np.float32)
    comm.all_reduce(x)
    sub.all_reduce(x)
    running = ours()
    sub.close()
    comm.close()
    assert ours() == [], (transport, "still running after close:", ours(), "open:", running)
assert zmq_context.live_contexts() == 0
assert not heap._malloc_tuned, "the process's malloc settings were changed by default"
print("clean")
"""


def test_close_leaves_no_thread_context_or_malloc_setting_behind() -> None:
    """What ringcomm starts (progress threads, the watchdog, ZeroMQ's I/O and authenticator
    threads) ends with the last close(), and by default the process's allocator is left as
    it was: ringcomm must not change how the rest of the process performs (MPI in the same
    process ran its 16 MiB allreduce 2.2-2.7x slower after ringcomm tuned malloc; see
    bench/side_effects.py)."""
    res = subprocess.run(
        [sys.executable, "-c", _LEAVES_NOTHING],
        env={**__import__("os").environ, "RINGCOMM_SECRET": "s"},  # the authenticator runs too
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "clean" in res.stdout, res.stdout + res.stderr


def test_each_io_thread_count_gets_its_own_context_and_the_store_shares_it() -> None:
    """RINGCOMM_ZMQ_IO_THREADS holds for every communicator and for the rendezvous store
    (it used to take effect only for the first ZeroMQ context of the process, and the store
    always used pyzmq's global one)."""
    import zmq

    from ringcomm.rendezvous.store import StoreServer
    from ringcomm.transport import zmq_context

    before = zmq_context.live_contexts()  # other tests' communicators may hold one
    one = ringcomm.init(rank=0, size=1, transport="zmq", config=ringcomm.Config(zmq_io_threads=1))
    two = ringcomm.init(rank=0, size=1, transport="zmq", config=ringcomm.Config(zmq_io_threads=2))
    try:
        threads = [c._transport._endpoint._ctx.get(zmq.IO_THREADS) for c in (one, two)]
        assert threads == [1, 2], threads
        store = StoreServer("127.0.0.1", 0, io_threads=2)
        try:
            assert store._ctx is two._transport._endpoint._ctx
        finally:
            store.close()
    finally:
        one.close()
        two.close()
    assert zmq_context.live_contexts() == before
