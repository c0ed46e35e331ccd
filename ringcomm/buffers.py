"""Buffer intake: numpy arrays, torch CPU tensors and buffer-protocol objects, as flat arrays;
GPU buffers are handed to :mod:`ringcomm.gpu`.

Nothing is copied: the collective works on a flat numpy view of the caller's memory. torch
is never imported here; a tensor is recognised because torch is already loaded. bfloat16
(torch) has no numpy dtype and travels as its ``uint16`` bit pattern with ``bfloat16=True``.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import numpy as np

from ringcomm import gpu, native

# Supported dtype -> its name (str(dtype) costs ~5 us a call; this is a dict lookup).
_SUPPORTED = {np.dtype(t): t for t in native.BUFFER_DTYPES}


class Buffer(NamedTuple):
    """A flat, contiguous view of a user's buffer.

    Attributes:
        array: 1-D numpy view of the memory (``uint16`` for bfloat16).
        dtype_name: the user-facing dtype name, e.g. ``"float32"`` or ``"bfloat16"``.
        bfloat16: True when ``array`` holds bfloat16 bit patterns.
        owner: the object the user passed, kept alive while an operation runs.
    """

    array: np.ndarray
    dtype_name: str
    bfloat16: bool
    owner: Any

    @property
    def count(self) -> int:
        return self.array.size  # type: ignore[no-any-return]

    @property
    def nbytes(self) -> int:
        return self.array.nbytes  # type: ignore[no-any-return]

    @property
    def addr(self) -> int:
        """Address of the first byte."""
        return int(self.array.ctypes.data)

    @property
    def is_floating(self) -> bool:
        return self.bfloat16 or self.array.dtype.kind == "f"

    @property
    def is_integral(self) -> bool:
        return not self.bfloat16 and self.array.dtype.kind in "iub"


# Buffer(...) without NamedTuple's generated __new__ (0.19 -> 0.13 us; every call makes one).
_new_buffer = tuple.__new__


def _torch_tensor_type() -> type | None:
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def _from_torch(t: Any, name: str) -> tuple[np.ndarray, str, bool]:
    import torch  # already imported: we were handed a tensor

    if t.device.type != "cpu":
        raise TypeError(f"{name}: ringcomm takes CPU and CUDA tensors; got one on {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: tensor is not contiguous; call .contiguous() first")
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).reshape(-1), "bfloat16", True
    try:
        arr = t.numpy()
    except TypeError as e:
        raise TypeError(f"{name}: unsupported tensor dtype {t.dtype}") from e
    return arr.reshape(-1), str(arr.dtype), False


def plain_array(obj: Any, writable: bool) -> np.ndarray | None:
    """``obj`` flat, where it is a numpy array that :func:`as_buffer` takes as it is if its
    dtype is supported: C-contiguous, and writable where ``writable`` (the dtype is not
    checked here); else None (as_buffer takes it another way, or says why not)."""
    if type(obj) is not np.ndarray:
        return None
    flags = obj.flags
    if flags.c_contiguous and (flags.writeable or not writable):
        return obj if obj.ndim == 1 else obj.reshape(-1)
    return None


def as_buffer(
    obj: Any, name: str, *, writable: bool, read: bool = True, role: str = ""
) -> Buffer | gpu.DeviceBuffer:
    """Return a flat view of ``obj``'s memory, checking contiguity, dtype and writability.

    Args:
        obj: numpy array, torch tensor (CPU or CUDA), CuPy array, or any object with the
            buffer protocol or the CUDA array interface.
        name: the argument's name, for error messages.
        role: a word that follows ``name`` there (the argument's name in two parts, put
            together only where needed: an f-string costs every call).
        writable: the operation writes into this buffer.
        read: the operation reads it (False for pure outputs; matters for GPU buffers,
            which are then not copied to the host when staged).

    Raises:
        TypeError: unsupported object or dtype.
        ValueError: non-contiguous or read-only memory where writing is needed.
        ImportError: a GPU buffer without CuPy installed.
    """
    if type(obj) is np.ndarray:  # the common call, checked in a few attribute reads
        arr = plain_array(obj, writable)
        dtype_name = _SUPPORTED.get(obj.dtype)
        if arr is not None and dtype_name is not None:
            return _new_buffer(Buffer, (arr, dtype_name, False, obj))
    if role:
        name = f"{name} {role}"
    if gpu.is_device(obj):
        return gpu.as_device_buffer(obj, name, writable=writable, read=read)
    tensor_type = _torch_tensor_type()
    if tensor_type is not None and isinstance(obj, tensor_type):
        arr, dtype_name, bf16 = _from_torch(obj, name)
    else:
        if isinstance(obj, np.ndarray):
            arr = obj
        else:
            try:
                view = memoryview(obj)
            except TypeError:
                raise TypeError(
                    f"{name}: expected a numpy array, a torch tensor, a CuPy array or an object "
                    f"with the buffer protocol, got {type(obj).__name__}"
                ) from None
            if not view.contiguous:
                raise ValueError(f"{name}: buffer is not contiguous")
            arr = np.asarray(view)
        if not arr.flags.c_contiguous:
            raise ValueError(
                f"{name}: array is not C-contiguous (strides {arr.strides}); "
                "pass np.ascontiguousarray(...) and copy the result back"
            )
        dtype_name = _SUPPORTED.get(arr.dtype)
        if dtype_name is None:
            raise TypeError(f"{name}: unsupported dtype {arr.dtype}")
        arr = arr.reshape(-1)
        bf16 = False
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name}: buffer is read-only but the operation writes into it")
    return Buffer(arr, dtype_name, bf16, obj)
