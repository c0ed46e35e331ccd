"""Bridge ringcomm's asynchronous work to torch futures and c10d ``Work`` objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

import ringcomm


def torch_future(
    work: ringcomm.Work, result: Callable[[], Any], devices: list[torch.device] | None = None
) -> torch.futures.Future[Any]:
    """A torch future completed with ``result()`` (or the error) when ``work`` finishes.

    It completes on ringcomm's progress thread the moment the operation does, so DDP keeps
    overlapping the next buckets' backward with this one's communication. ``devices``: the
    CUDA devices of the result's tensors (torch then orders its users' streams after it).
    """
    fut: torch.futures.Future[Any] = torch.futures.Future(devices=devices or None)

    def settle(done: Any) -> None:
        error = done.exception()
        if error is not None:
            fut.set_exception(error)
            return
        try:
            fut.set_result(result())
        except BaseException as e:  # a copy-out that failed: the waiter must hear of it
            fut.set_exception(e)

    work.get_future().add_done_callback(settle)
    return fut


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


def c10d_work(
    work: ringcomm.Work, result: Callable[[], Any], devices: list[torch.device] | None = None
) -> dist.Work:
    """A ``torch.distributed`` Work whose ``wait()``/``get_future()`` follow ``work``."""
    return _RingcommWork(torch_future(work, result, devices))
