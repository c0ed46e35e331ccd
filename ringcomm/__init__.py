"""ringcomm: collective communication for distributed training, in Python.

Example::

    import numpy as np
    import ringcomm

    comm = ringcomm.init()  # world from RINGCOMM_* / torchrun variables, or rank 0 of 1
    grad = np.ones(1 << 20, np.float32)
    comm.all_reduce(grad, op=ringcomm.AVG)
    comm.close()
"""

from __future__ import annotations

from ringcomm.communicator import Communicator
from ringcomm.config import Config
from ringcomm.errors import (
    CommClosedError,
    CommTimeoutError,
    PeerLostError,
    RendezvousError,
    RingcommError,
    TransportError,
)
from ringcomm.types import ReduceOp
from ringcomm.work import Work
from ringcomm.world import init

__version__ = "0.1.0"

SUM = ReduceOp.SUM
PROD = ReduceOp.PROD
MIN = ReduceOp.MIN
MAX = ReduceOp.MAX
AVG = ReduceOp.AVG
BAND = ReduceOp.BAND
BOR = ReduceOp.BOR
BXOR = ReduceOp.BXOR

__all__ = [
    "AVG",
    "BAND",
    "BOR",
    "BXOR",
    "MAX",
    "MIN",
    "PROD",
    "SUM",
    "CommClosedError",
    "CommTimeoutError",
    "Communicator",
    "Config",
    "PeerLostError",
    "ReduceOp",
    "RendezvousError",
    "RingcommError",
    "TransportError",
    "Work",
    "init",
]
