"""Shared-memory transport between ranks of one host.

- :mod:`~ringcomm.transport.shm.syscalls`: futex, ``process_vm_readv``, pidfd.
- :mod:`~ringcomm.transport.shm.segment`: a rank's segment: layout, create/open, names.
- :mod:`~ringcomm.transport.shm.slots`: the slot protocol (:class:`ShmTransport`).
- :mod:`~ringcomm.transport.shm.endpoint`: the ``auto``/``shm`` endpoint that pairs it with
  ZeroMQ sockets for ranks on other hosts.
"""

from __future__ import annotations

from ringcomm.transport.shm.endpoint import ShmEndpoint
from ringcomm.transport.shm.slots import ShmTransport

__all__ = ["ShmEndpoint", "ShmTransport"]
