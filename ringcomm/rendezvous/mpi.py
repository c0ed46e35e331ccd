"""Forming a world under an MPI launch (mpiexec, mpirun, srun with PMI).

With ``transport="mpi"`` the world is ``MPI_COMM_WORLD`` itself. With any other transport
MPI only bootstraps it, in place of the rendezvous store: rank 0 makes the job secret,
every rank finds the interface that routes to another host of the job, and the endpoints
swap their addresses with an MPI allgather.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType, TracebackType

from ringcomm import hosts
from ringcomm.config import Config, WorldSpec
from ringcomm.errors import RendezvousError, TransportError
from ringcomm.rendezvous import report
from ringcomm.transport.base import EndpointFactory, Transport
from ringcomm.transport.mpi import MpiTransport

# After an uncaught exception, wait this long for the launcher to forward the traceback
# before MPI_Abort (see abort_on_uncaught_exception).
_ABORT_GRACE_SECONDS = 0.5

_abort_hook_installed = False
_abort_hook_lock = threading.Lock()


def load_mpi(config: Config) -> ModuleType:
    """Import ``mpi4py.MPI`` (initialising MPI), check its thread level, and arm the abort
    on an uncaught exception (see :func:`abort_on_uncaught_exception`)."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(
            f"the MPI transport needs mpi4py ({e}): pip install 'ringcomm[mpi]' "
            "(brings mpi4py and the mpich wheel with its mpiexec)"
        ) from None
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise TransportError(
            "the MPI transport calls MPI from the communicator's progress thread and needs "
            f"MPI_THREAD_MULTIPLE, but MPI was initialised at level {MPI.Query_thread()}; "
            "leave mpi4py.rc.thread_level at 'multiple' (its default)"
        )
    if config.mpi_abort_on_error and MPI.COMM_WORLD.Get_size() > 1:
        abort_on_uncaught_exception(MPI)
    return MPI


def abort_on_uncaught_exception(mpi: ModuleType) -> None:
    """Make an exception that ends the main thread print its traceback and ``MPI_Abort``
    the job, so the other ranks do not wait for this one until their timeouts (what
    ``python -m mpi4py`` does). Installed once per process, chained to the previous hook."""
    global _abort_hook_installed
    with _abort_hook_lock:
        if _abort_hook_installed:
            return
        previous = sys.excepthook

        def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
            rank = mpi.COMM_WORLD.Get_rank()
            sys.stderr.write(f"ringcomm: uncaught exception on rank {rank}, MPI_Abort follows\n")
            previous(kind, value, tb)
            sys.stderr.flush()
            sys.stdout.flush()
            # The launcher forwards output asynchronously; aborting at once lost the end of
            # the traceback in 1 of ~20 runs under mpiexec (hydra).
            time.sleep(_ABORT_GRACE_SECONDS)
            mpi.COMM_WORLD.Abort(1)

        sys.excepthook = hook
        _abort_hook_installed = True


def form_mpi_world(spec: WorldSpec, config: Config) -> MpiTransport:
    """The world transport over ``MPI_COMM_WORLD`` (rank and size are MPI's)."""
    mpi = load_mpi(config)
    world = mpi.COMM_WORLD
    if spec.source != "default/default" and (spec.rank, spec.size) != (
        world.Get_rank(),
        world.Get_size(),
    ):
        raise RendezvousError(
            f"rank {spec.rank} of {spec.size} (from {spec.source}) disagrees with MPI, which "
            f"says rank {world.Get_rank()} of {world.Get_size()}; with transport='mpi' leave "
            "rank and size to MPI"
        )
    comm_id = world.bcast(int.from_bytes(os.urandom(8), "little"), root=0)
    return MpiTransport(world.Dup(), comm_id, config, mpi)


def exchange_addresses(spec: WorldSpec, address: bytes, config: Config) -> tuple[list[bytes], int]:
    """Bootstrap another transport through MPI: every rank's endpoint address and a
    communicator id chosen by rank 0 (used instead of the rendezvous store)."""
    mpi = load_mpi(config)
    world = mpi.COMM_WORLD
    if (spec.rank, spec.size) != (world.Get_rank(), world.Get_size()):
        raise RendezvousError(
            f"rank {spec.rank} of {spec.size} (from {spec.source}) disagrees with MPI's rank "
            f"{world.Get_rank()} of {world.Get_size()}"
        )
    addresses = world.allgather(address)
    comm_id = world.bcast(int.from_bytes(os.urandom(8), "little"), root=0)
    return addresses, comm_id


def job_secret(config: Config) -> str:
    """A fresh job secret made by rank 0 and broadcast (see :mod:`ringcomm.security`)."""
    world = load_mpi(config).COMM_WORLD
    return world.bcast(secrets.token_hex(16) if world.Get_rank() == 0 else None, root=0)


def barrier(config: Config) -> None:
    """An ``MPI_COMM_WORLD`` barrier that gives up after ``config.timeout_seconds``."""
    mpi = load_mpi(config)
    request = mpi.COMM_WORLD.Ibarrier()
    deadline = time.monotonic() + config.timeout_seconds
    while not request.Test():
        if time.monotonic() >= deadline:
            raise RendezvousError(
                f"rank {mpi.COMM_WORLD.Get_rank()}: not every MPI rank reached ringcomm.init "
                f"within {config.timeout_seconds:.0f}s"
            )
        time.sleep(0.001)


def world_hosts(config: Config, identity: str) -> list[str]:
    """Every rank's host identity, gathered through MPI."""
    return load_mpi(config).COMM_WORLD.allgather(identity)


def _bind_host_under_mpi(config: Config) -> str:
    """The interface that routes to another host of the job (loopback if there is none)."""
    mine = hosts.host_identity()
    rows = world_hosts(config, json.dumps([mine, socket.gethostname()]))
    others = [name for identity, name in map(json.loads, rows) if identity != mine]
    if config.socket_ifname:
        return hosts.address_of_interface(config.socket_ifname)
    return hosts.local_address_towards(others[0]) if others else "127.0.0.1"


def form_world_over_mpi(
    spec: WorldSpec, config: Config, endpoints: Callable[[str, Config], EndpointFactory]
) -> tuple[Transport, EndpointFactory]:
    """Connect ``spec.transport``'s endpoints (made by ``endpoints(bind_host, config)``),
    bootstrapped through MPI instead of the rendezvous store."""
    if config.secret is None:  # MPI launched us: rank 0 makes this job's secret
        config = dataclasses.replace(config, secret=job_secret(config))
    factory = endpoints(_bind_host_under_mpi(config), config)
    endpoint = factory()
    try:
        addresses, comm_id = exchange_addresses(spec, endpoint.address, config)
        transport = endpoint.connect(spec.rank, addresses, comm_id)
    except BaseException:
        endpoint.close()
        raise
    barrier(config)  # as with the store: nobody returns before everyone connected
    report.log_init_report(spec, config, addresses, transport.name)
    return transport, factory
