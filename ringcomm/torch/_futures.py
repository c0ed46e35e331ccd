"""Bridge ringcomm's asynchronous work to torch futures and c10d ``Work`` objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

import ringcomm


def backend_error(error: BaseException) -> BaseException:
    """ringcomm's ``error`` as torch.distributed callers expect a backend's failure: a
    ``DistBackendError`` (a RuntimeError), saying "Timed out" for a timeout, ringcomm's
    error as its cause. Anything not ringcomm's passes unchanged."""
    if not isinstance(error, ringcomm.RingcommError):
        return error
    text = f"ringcomm: {error}"
    if isinstance(error, ringcomm.CommTimeoutError):
        text = f"ringcomm: Timed out ({error})"
    translated = dist.DistBackendError(text)
    translated.__cause__ = error
    return translated


def torch_future(
    work: ringcomm.Work,
    result: Callable[[], Any],
    devices: list[torch.device] | None = None,
    translate: bool = False,
) -> torch.futures.Future[Any]:
    """A torch future completed with ``result()`` (or the error) when ``work`` finishes.

    It completes on ringcomm's progress thread the moment the operation does, so DDP keeps
    overlapping the next buckets' backward with this one's communication. ``devices``: the
    CUDA devices of the result's tensors (torch then orders its users' streams after it).
    ``translate``: fail with :func:`backend_error` of ringcomm's error.
    """
    fut: torch.futures.Future[Any] = torch.futures.Future(devices=devices or None)
    settle_from(work, fut, result, translate)
    return fut


def settle_from(
    work: ringcomm.Work,
    fut: torch.futures.Future[Any],
    result: Callable[[], Any],
    translate: bool = False,
) -> None:
    """Complete ``fut`` with ``result()`` (or the error) when ``work`` finishes (see
    :func:`torch_future`)."""

    def settle(done: Any) -> None:
        error = done.exception()
        if error is not None:
            fut.set_exception(backend_error(error) if translate else error)
            return
        try:
            fut.set_result(result())
        except BaseException as e:  # a copy-out that failed: the waiter must hear of it
            fut.set_exception(e)

    work.get_future().add_done_callback(settle)


def cuda_devices(*tensors: Any) -> list[torch.device]:
    """The distinct CUDA devices among ``tensors`` (for :func:`torch_future`)."""
    return list({t.device: None for t in tensors if t is not None and t.is_cuda})


class _RingcommWork(dist.Work):
    """A ``torch.distributed`` Work over a torch future: ``wait()`` raises what the operation
    raised. (torch's own ``_create_work_from_future`` returns True from ``wait()`` even when
    its future failed, in torch 2.13: a timed-out collective would pass for done.)"""

    def __init__(self, future: torch.futures.Future[Any]) -> None:
        super().__init__()
        self._future = future

    def wait(self, timeout: Any = None) -> bool:
        self._future.wait()  # raises the operation's error
        return True

    def get_future(self) -> torch.futures.Future[Any]:
        return self._future

    def is_completed(self) -> bool:
        return self._future.done()

    def is_success(self) -> bool:
        if not self._future.done():
            return False
        try:
            self._future.value()
        except Exception:
            return False
        return True

    def exception(self) -> BaseException | None:
        if not self._future.done():
            return None
        try:
            self._future.value()
        except Exception as e:
            return e
        return None


class DeferredWork(_RingcommWork):
    """The Work of an operation not yet started: ``start()`` runs before anything waits on
    it or asks about it (the backend's deferred receives)."""

    def __init__(self, future: torch.futures.Future[Any], start: Callable[[], None]) -> None:
        super().__init__(future)
        self._start = start
        self.source: Callable[[], int] | None = None  # a receive from any source: its sender

    def _source_rank(self) -> int:
        """The rank a receive from any source took its message from (torch asks after
        ``wait()``)."""
        self.wait()
        if self.source is None:
            raise RuntimeError("_source_rank: this Work is not a receive from any source")
        return self.source()

    def wait(self, timeout: Any = None) -> bool:
        self._start()
        return super().wait(timeout)

    def get_future(self) -> torch.futures.Future[Any]:
        self._start()
        return super().get_future()

    def is_completed(self) -> bool:
        self._start()
        return super().is_completed()

    def is_success(self) -> bool:
        self._start()
        return super().is_success()

    def exception(self) -> BaseException | None:
        self._start()
        return super().exception()


def c10d_work(
    work: ringcomm.Work, result: Callable[[], Any], devices: list[torch.device] | None = None
) -> dist.Work:
    """A ``torch.distributed`` Work whose ``wait()``/``get_future()`` follow ``work`` (and
    fail as torch.distributed backends do: :func:`backend_error`)."""
    return _RingcommWork(torch_future(work, result, devices, translate=True))
