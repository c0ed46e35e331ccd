"""Transports: how tagged messages move between the ranks of one communicator.

- :mod:`~ringcomm.transport.base`: the :class:`Transport` and :class:`Endpoint` interfaces,
  the wire header, and :class:`FramedTransport` (matching by tag for socket-like
  transports).
- :mod:`~ringcomm.transport.shm`: shared memory between ranks of one host (with ZeroMQ to
  the rest: what ``RINGCOMM_TRANSPORT=auto`` means).
- :mod:`~ringcomm.transport.zmq`: ZeroMQ sockets (``ipc://`` on a host, ``tcp://`` across).
- :mod:`~ringcomm.transport.mpi`: MPI point-to-point through mpi4py.
- :mod:`~ringcomm.transport.local`: threads of one process (tests).
- :mod:`~ringcomm.transport.heap`: glibc malloc tuning for received frames.

Forming a world out of endpoints is bootstrap: :mod:`ringcomm.rendezvous`.
"""
