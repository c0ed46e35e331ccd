"""Handles to operations started with ``async_op=True``."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

from ringcomm.errors import CommTimeoutError, RingcommError


class Work:
    """An operation in flight. It keeps the operation's buffers alive until it is done.

    Example::

        work = comm.all_reduce(grad, async_op=True)
        ...  # overlap other work
        work.wait()
    """

    def __init__(
        self,
        future: concurrent.futures.Future[Any],
        name: str,
        buffers: tuple[Any, ...],
        progress: threading.Thread | None = None,
    ):
        self._future = future
        self._name = name
        self._buffers = buffers
        self._progress = progress  # the thread that runs it: waiting there waits for good

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the operation is done; return True.

        Args:
            timeout: seconds to wait here (None: until the operation itself finishes or hits
                its own timeout).

        Raises:
            CommTimeoutError: ``timeout`` passed first (the operation keeps running).
            RingcommError: whatever made the operation fail.
        """
        if threading.current_thread() is self._progress and not self._future.done():
            raise RingcommError(
                f"{self._name}: waiting for it in a completion callback of its own "
                "communicator would wait forever (the callback runs on the thread that "
                "runs the operation); chain it with get_future() instead"
            )
        # Wait first, then fetch: the operation's own error may itself be a TimeoutError.
        concurrent.futures.wait([self._future], timeout)
        if not self._future.done():
            raise CommTimeoutError(f"{self._name} still running after wait({timeout})")
        self._future.result()
        return True

    def is_completed(self) -> bool:
        """True once the operation finished, successfully or not."""
        return self._future.done()

    def exception(self) -> BaseException | None:
        """The error the finished operation raised, or None (does not block)."""
        return self._future.exception(0) if self._future.done() else None

    def get_future(self) -> concurrent.futures.Future[Any]:
        """A ``concurrent.futures.Future`` completed when the operation is (result: None)."""
        return self._future

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"<ringcomm.Work {self._name} {state}>"
