"""A stand-in for the slice of CuPy that ringcomm's staging path touches, on host memory.

"Device" arrays are numpy arrays behind ``__cuda_array_interface__``; copies are
synchronous memmoves; streams and events are always done. It lets the CPU suite drive
ringcomm.gpu's intake and staging logic (which buffers are copied, chunking, in-place
checks) through real collectives. It checks nothing about CUDA itself: bench/gpu_check.sh
does that on a GPU.
"""

from __future__ import annotations

import ctypes
import types
from typing import Any

import numpy as np


class ndarray:
    def __init__(self, host: np.ndarray) -> None:
        self._host = host

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return self._host.__array_interface__

    dtype = property(lambda self: self._host.dtype)
    size = property(lambda self: self._host.size)
    nbytes = property(lambda self: self._host.nbytes)
    flags = property(lambda self: self._host.flags)
    device = property(lambda self: types.SimpleNamespace(id=0))
    data = property(lambda self: types.SimpleNamespace(ptr=self._host.ctypes.data))

    def reshape(self, *shape: int) -> ndarray:
        return ndarray(self._host.reshape(*shape))

    def view(self, dtype: Any) -> ndarray:
        return ndarray(self._host.view(dtype))

    def __getitem__(self, key: Any) -> ndarray:
        return ndarray(self._host[key])


def asarray(obj: Any) -> ndarray:
    if isinstance(obj, ndarray):
        return obj
    return ndarray(np.asarray(obj))


def asnumpy(a: ndarray) -> np.ndarray:
    return a._host.copy()


class _Done:
    done = True
    ptr = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass


class Device:
    def __init__(self, device_id: int = 0) -> None:
        self.id = device_id
        self.pci_bus_id = "0000:00:00.0"

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def use(self) -> None:
        pass


def _memcpy(dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
    ctypes.memmove(dst, src, nbytes)


def _pinned(nbytes: int) -> bytearray:
    return bytearray(nbytes)


cuda = types.SimpleNamespace(
    Device=Device,
    Stream=_Done,
    ExternalStream=_Done,
    Event=_Done,
    get_current_stream=lambda device_id=-1: _Done(),
    alloc_pinned_memory=_pinned,
    runtime=types.SimpleNamespace(memcpyAsync=_memcpy, memcpyDeviceToHost=2, memcpyHostToDevice=1),
    nccl=types.SimpleNamespace(available=False),
)
