"""Bridge ringcomm's asynchronous work to torch futures and c10d ``Work`` objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future

import ringcomm


def torch_future(work: ringcomm.Work, result: Callable[[], Any]) -> torch.futures.Future[Any]:
    """A torch future completed with ``result()`` (or the error) when ``work`` finishes.

    It completes on ringcomm's progress thread the moment the operation does, so DDP keeps
    overlapping the next buckets' backward with this one's communication.
    """
    fut: torch.futures.Future[Any] = torch.futures.Future()

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


def c10d_work(work: ringcomm.Work, result: Callable[[], Any]) -> dist.Work:
    """A ``torch.distributed`` Work whose ``wait()``/``get_future()`` follow ``work``."""
    return _create_work_from_future(torch_future(work, result))
