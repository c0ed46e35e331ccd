"""Forming the world through the rendezvous store (or MPI, see :mod:`ringcomm.rendezvous.mpi`).

Rank 0 hosts the store at MASTER_ADDR:MASTER_PORT for the time of ``init``. Every rank binds
an endpoint, publishes its address under ``addr/<rank>``, reads everyone else's and
connects; ``init`` returns on every rank once all have connected. Rank 0 leaves the store
up until every rank has read what it needs.

Under an MPI launch no store is needed: the MPI transport is MPI's own world, and ZeroMQ
endpoints swap their addresses with an MPI allgather.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from ringcomm import hosts
from ringcomm.config import Config, WorldSpec
from ringcomm.errors import RendezvousError
from ringcomm.rendezvous import report
from ringcomm.rendezvous.store import LocalStore, Store, StoreClient, StoreServer, resolve_host
from ringcomm.security import Security
from ringcomm.transport.base import Endpoint, EndpointFactory, Transport

_local_stores: dict[tuple[str, int], LocalStore] = {}
_local_stores_lock = threading.Lock()


def _socket_endpoints(transport: str, bind_host: str, config: Config) -> Callable[[], Endpoint]:
    """Endpoints for ``zmq`` (sockets only) or ``auto`` / ``shm`` (shared memory on a host)."""
    if transport == "zmq":
        from ringcomm.transport.zmq import ZmqEndpoint

        return lambda: ZmqEndpoint(bind_host, config)
    from ringcomm.transport.shm.endpoint import ShmEndpoint

    return lambda: ShmEndpoint(bind_host, config, transport)


def _open_store(spec: WorldSpec, config: Config) -> tuple[Store, Callable[[], None]]:
    if spec.transport == "local":
        key = (spec.master_addr, spec.master_port)
        with _local_stores_lock:
            store = _local_stores.setdefault(key, LocalStore())

        def release() -> None:
            with _local_stores_lock:
                if _local_stores.get(key) is store:
                    del _local_stores[key]

        return store, release
    host = resolve_host(spec.master_addr)
    security = Security(config.secret, config.encrypt)
    threads = config.zmq_io_threads
    server = StoreServer(host, spec.master_port, security, threads) if spec.rank == 0 else None
    client = StoreClient(
        host, spec.master_port, spec.rank, config.timeout_seconds, security, threads
    )

    def close() -> None:
        client.close()
        if server is not None:
            server.close()

    return client, close


# How long rank 0 keeps the store up after its own connect failed, for the others to fetch
# the addresses (and so fail with the same error rather than an unreachable store).
_FETCH_GRACE_SECONDS = 10.0


def _wait_for_count(store: Store, key: str, count: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while store.add(key, 0) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def form_world(
    spec: WorldSpec, config: Config, store: Store | None = None
) -> tuple[Transport, EndpointFactory]:
    """Rendezvous with every rank of ``spec`` and return the connected world transport.

    ``store``: rendezvous through this store (e.g. torch.distributed's) instead of hosting
    one on rank 0; keys are ``addr/<rank>``, ``comm_id``, ``joined``, ``all_joined``,
    ``left``, ``all_left``.
    """
    if spec.transport == "mpi":
        from ringcomm.rendezvous import mpi

        world = mpi.form_mpi_world(spec, config)
        report.log_init_report(spec, config, None, world.name)
        return world, lambda: None
    if spec.mpi_launch:
        from ringcomm.rendezvous import mpi

        return mpi.form_world_over_mpi(
            spec, config, lambda host, cfg: _socket_endpoints(spec.transport, host, cfg)
        )
    if spec.transport == "local":
        from ringcomm.transport.local import LocalEndpoint

        factory: EndpointFactory = lambda: LocalEndpoint(  # noqa: E731
            config.zero_copy_bytes, config.unmatched_bytes
        )
    else:
        bind_host = hosts.bind_address(spec.master_addr, config.socket_ifname)
        factory = _socket_endpoints(spec.transport, bind_host, config)
    endpoint = factory()
    assert endpoint is not None
    if spec.size == 1:
        transport = endpoint.connect(0, [endpoint.address], int.from_bytes(os.urandom(8), "little"))
        report.log_init_report(spec, config, [endpoint.address], transport.name)
        return transport, factory
    if store is None:
        try:
            store, close_store = _open_store(spec, config)
        except BaseException:
            endpoint.close()  # its socket, its ipc file and its share of the context
            raise
    else:
        close_store = lambda: None  # noqa: E731 (the caller owns it)
    try:
        store.set(f"addr/{spec.rank}", endpoint.address)
        if spec.rank == 0:
            store.set("comm_id", os.urandom(8))
        addresses = []
        for r in range(spec.size):
            try:
                addresses.append(store.get(f"addr/{r}", config.timeout_seconds))
            except RendezvousError as e:
                raise RendezvousError(
                    f"rank {spec.rank}: rank {r} of {spec.size} did not join within "
                    f"{config.timeout_seconds:.0f}s ({e})"
                ) from None
        comm_id = int.from_bytes(store.get("comm_id", config.timeout_seconds), "little")
        store.add("fetched", 1)
        try:
            transport = endpoint.connect(spec.rank, addresses, comm_id)
        except Exception:
            if spec.rank == 0:  # let the others read the addresses and fail the same way
                _wait_for_count(store, "fetched", spec.size, _FETCH_GRACE_SECONDS)
            raise
        # No rank returns before every rank has connected (a rank that finished early and
        # closed must not vanish under a peer that is still connecting) ...
        if store.add("joined", 1) == spec.size:
            store.set("all_joined", b"")
        store.get("all_joined", config.timeout_seconds)
        # ... and rank 0 keeps the store up until no rank needs it any more.
        if store.add("left", 1) == spec.size:
            store.set("all_left", b"")
        if spec.rank == 0:
            store.get("all_left", config.timeout_seconds)
    except BaseException:
        endpoint.close()
        raise
    finally:
        close_store()
    report.log_init_report(spec, config, addresses, transport.name)
    return transport, factory
