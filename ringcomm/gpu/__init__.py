"""GPU buffers: CuPy arrays and torch CUDA tensors.

- :mod:`~ringcomm.gpu.intake`: taking a device buffer as a flat CuPy view (no CuPy import
  until one is handed in).
- :mod:`~ringcomm.gpu.engine`: running a collective on device buffers, on NCCL or staged
  through pinned host memory.
"""

from __future__ import annotations

from ringcomm.gpu.intake import DeviceBuffer, as_device_buffer, cupy_module, is_device, torch_view

__all__ = ["DeviceBuffer", "as_device_buffer", "cupy_module", "is_device", "torch_view"]
