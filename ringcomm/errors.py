"""One exception family: everything ringcomm raises on purpose is a ``RingcommError``.

Specific errors also subclass the built-in they resemble (as pyzmq does), so callers can
catch either way: ``except TimeoutError`` catches :class:`CommTimeoutError`.
"""

from __future__ import annotations


class RingcommError(Exception):
    """Base class of ringcomm's errors."""


class CommTimeoutError(RingcommError, TimeoutError):
    """A blocking call did not finish within its timeout; the message names the operation,
    its sequence number, this rank and the peer it waited on."""


class RendezvousError(RingcommError, ConnectionError):
    """The world could not be formed: the store was unreachable, or ranks disagree."""


class TransportError(RingcommError, ConnectionError):
    """The transport failed (a socket error, a malformed or mismatched message). The
    communicator is unusable afterwards: close it and build a new one."""


class PeerLostError(TransportError):
    """A peer rank went away while an operation needed it."""


class CommClosedError(RingcommError, RuntimeError):
    """The communicator was closed or aborted; no further operation can run on it."""
