"""Device buffers: CuPy arrays, torch CUDA tensors and anything with
``__cuda_array_interface__``, taken as flat CuPy views of the caller's memory.

Nothing here imports CuPy or torch until a device buffer is handed in: :func:`is_device`
looks at the object alone. The collectives on such buffers run in
:mod:`ringcomm.gpu.engine` (NCCL, or staging through pinned host memory).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ringcomm import native


def is_device(obj: Any) -> bool:
    """True for a GPU buffer: a torch tensor not on the CPU, or an object with the CUDA
    array interface (CuPy, Numba, ...). Imports nothing."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.device.type == "cuda"
    return hasattr(obj, "__cuda_array_interface__")


def cupy_module() -> Any:
    """CuPy, or an ImportError saying how to get it."""
    try:
        import cupy
    except ImportError as e:
        raise ImportError(
            "ringcomm needs CuPy for GPU buffers: pip install cupy-cuda12x (or the "
            "cupy-cuda1Nx that matches your CUDA)"
        ) from e
    return cupy


class DeviceBuffer:
    """A flat, contiguous CuPy view of a user's GPU buffer (``uint16`` for bfloat16).

    Attributes:
        device: the 1-D CuPy view.
        device_id: the CUDA device it lives on.
        dtype_name, bfloat16, owner: as :class:`ringcomm.buffers.Buffer`.
        ready: a CUDA event recorded on the caller's current stream at the call, so the
            collective reads the buffer only after the work queued before it.
        read: the operation reads this buffer (it is copied to the host when staged).
        write: the operation writes it (copied back when staged).
        array: while a staged operation runs, the pinned host copy the host algorithms
            work on; None otherwise.
    """

    __slots__ = (
        "array",
        "bfloat16",
        "device",
        "device_id",
        "dtype_name",
        "owner",
        "read",
        "ready",
        "write",
    )

    def __init__(
        self,
        device: Any,
        device_id: int,
        dtype_name: str,
        bfloat16: bool,
        owner: Any,
        ready: Any,
        read: bool,
        write: bool,
    ) -> None:
        self.device = device
        self.device_id = device_id
        self.dtype_name = dtype_name
        self.bfloat16 = bfloat16
        self.owner = owner
        self.ready = ready
        self.read = read
        self.write = write
        self.array: np.ndarray | None = None

    @property
    def count(self) -> int:
        return int(self.device.size)

    @property
    def nbytes(self) -> int:
        return int(self.device.nbytes)

    @property
    def addr(self) -> int:
        return int(self.device.data.ptr)

    @property
    def half(self) -> str | None:
        """The 16-bit float format (``float16``/``bfloat16``, carried as uint16), else None."""
        return self.dtype_name if self.dtype_name in ("float16", "bfloat16") else None

    @property
    def is_floating(self) -> bool:
        return self.bfloat16 or self.device.dtype.kind == "f"

    @property
    def is_integral(self) -> bool:
        return not self.bfloat16 and self.device.dtype.kind in "iub"


_SUPPORTED = {np.dtype(t): t for t in native.BUFFER_DTYPES}


def torch_view(t: Any, name: str = "tensor") -> tuple[Any, str, bool, Any]:
    """A CUDA tensor as (flat CuPy view, dtype name or "", bfloat16?, the tensor's current
    torch stream as a CuPy stream). bfloat16 comes as ``uint16`` bits."""
    import torch  # already imported: we were handed a tensor

    cupy = cupy_module()
    if not t.is_contiguous():
        raise ValueError(f"{name}: tensor is not contiguous; call .contiguous() first")
    t = t.detach()
    stream = cupy.cuda.ExternalStream(
        torch.cuda.current_stream(t.device).cuda_stream, t.device.index
    )
    bf16 = t.dtype == torch.bfloat16
    if bf16:
        t = t.view(torch.int16)
    try:
        arr = cupy.from_dlpack(t)
    except (TypeError, ValueError, BufferError) as e:
        raise TypeError(f"{name}: unsupported tensor dtype {t.dtype}") from e
    if bf16:
        return arr.reshape(-1).view(np.uint16), "bfloat16", True, stream
    return arr.reshape(-1), "", False, stream


def as_device_buffer(obj: Any, name: str, *, writable: bool, read: bool = True) -> DeviceBuffer:
    """Take a GPU buffer (see :func:`is_device`) as a :class:`DeviceBuffer`.

    Args:
        obj: CuPy array, torch CUDA tensor, or an object with ``__cuda_array_interface__``.
        name: the argument's name, for error messages.
        writable: the operation writes into it.
        read: the operation reads it (False for pure outputs).

    Raises:
        ImportError: CuPy is missing.
        TypeError: unsupported dtype.
        ValueError: non-contiguous memory.
    """
    cupy = cupy_module()
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        arr, dtype_name, bf16, stream = torch_view(obj, name)
    else:
        arr = cupy.asarray(obj)  # zero-copy through the CUDA array interface
        bf16, dtype_name = False, ""
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name}: array is not C-contiguous; pass cupy.ascontiguousarray(...)")
        stream = cupy.cuda.get_current_stream(arr.device.id)
    if not bf16:
        dtype_name = _SUPPORTED.get(arr.dtype, "")
        if not dtype_name:
            raise TypeError(f"{name}: unsupported dtype {arr.dtype}")
    device_id = arr.device.id
    with cupy.cuda.Device(device_id):
        ready = cupy.cuda.Event(block=False, disable_timing=True, interprocess=False)
        ready.record(stream)
    return DeviceBuffer(arr.reshape(-1), device_id, dtype_name, bf16, obj, ready, read, writable)
