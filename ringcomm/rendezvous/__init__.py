"""Bootstrap: how ranks find each other and connect.

- :mod:`~ringcomm.rendezvous.store`: the key/value store rank 0 hosts during ``init``.
- :mod:`~ringcomm.rendezvous.world`: forming a world through the store.
- :mod:`~ringcomm.rendezvous.mpi`: forming a world under an MPI launch.
"""

from __future__ import annotations

from ringcomm.rendezvous.world import form_world

__all__ = ["form_world"]
