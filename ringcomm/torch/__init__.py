"""PyTorch adapter: DDP communication hooks and the "ringcomm" torch.distributed backend.

``import ringcomm.torch`` registers the backend::

    import ringcomm.torch
    dist.init_process_group("ringcomm")           # torchrun / env:// as usual
    model = DDP(model)                            # all its traffic on ringcomm

or keep your process group and send only the gradients through ringcomm::

    model.register_comm_hook(ringcomm.torch.communicator(), ringcomm.torch.allreduce_hook)
"""

from __future__ import annotations

try:
    import torch
    import torch.distributed  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"ringcomm.torch needs PyTorch ({e}): pip install 'ringcomm[torch]'"
    ) from None

from ringcomm.torch.backend import (
    BACKEND_NAME,
    ProcessGroupRingcomm,
    communicator,
    create_process_group,
    init_from_store,
    register,
)
from ringcomm.torch.hooks import (
    allreduce_hook,
    bf16_compress_hook,
    compress_wrapper,
    fp16_compress_hook,
)

register()

__all__ = [
    "BACKEND_NAME",
    "ProcessGroupRingcomm",
    "allreduce_hook",
    "bf16_compress_hook",
    "communicator",
    "compress_wrapper",
    "create_process_group",
    "fp16_compress_hook",
    "init_from_store",
    "register",
]
