"""The process's ZeroMQ contexts, shared and counted.

There is one context per I/O-thread count (``RINGCOMM_ZMQ_IO_THREADS``), shared by every
ringcomm socket that asks for that count: the data sockets of every communicator and the
rendezvous store. Each user acquires it and releases it when it closes its sockets; the last
release terminates it, with its I/O threads and its authenticator thread, so nothing of
ringcomm's keeps running in the process after ``close()``.
"""

from __future__ import annotations

import threading

import zmq

from ringcomm import security

_lock = threading.Lock()
_contexts: dict[int, tuple[zmq.Context, list[int]]] = {}  # io_threads -> (context, [users])


def acquire(io_threads: int) -> zmq.Context:
    """The context with ``io_threads`` I/O threads, made on first use; release it once
    done with its sockets."""
    with _lock:
        entry = _contexts.get(io_threads)
        if entry is None:
            entry = _contexts[io_threads] = (zmq.Context(io_threads=io_threads), [0])
        entry[1][0] += 1
        return entry[0]


def release(ctx: zmq.Context) -> None:
    """Give back a context from :func:`acquire` (after closing its sockets); the last user
    terminates it. Every ringcomm socket sets its own linger, so this waits at most that
    long for unsent messages."""
    with _lock:
        for io_threads, (known, users) in _contexts.items():
            if known is ctx:
                users[0] -= 1
                if users[0] > 0:
                    return
                del _contexts[io_threads]
                break
        else:
            return
    security.forget(ctx)  # stops its ZAP authenticator, whose sockets live in it
    ctx.term()


def live_contexts() -> int:
    """How many contexts are in use (for tests)."""
    with _lock:
        return len(_contexts)
