"""Joining the world: :func:`init` resolves where this process sits, applies the settings,
and forms the world through :mod:`ringcomm.rendezvous`."""

from __future__ import annotations

import dataclasses

from ringcomm import config as _config
from ringcomm import logs
from ringcomm.communicator import Communicator
from ringcomm.config import Config
from ringcomm.rendezvous import form_world

_log = logs.get_logger(logs.ROOT)  # records say "ringcomm", as before init moved here


def init(
    rank: int | None = None,
    size: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    transport: str | None = None,
    *,
    timeout: float | None = None,
    config: Config | None = None,
) -> Communicator:
    """Join the world and return its communicator.

    The world comes from, in order: these arguments, ``RINGCOMM_RANK``/``RINGCOMM_SIZE``/
    ``RINGCOMM_MASTER_ADDR``/``RINGCOMM_MASTER_PORT``, torchrun's ``RANK``/``WORLD_SIZE``/
    ``MASTER_ADDR``/``MASTER_PORT``, an MPI launcher (mpiexec/mpirun: rank and size are
    MPI's, no address needed); with none of them it is this process alone.
    Rank 0 hosts the rendezvous store at the master address and port (not under MPI).

    Args:
        rank: this process's rank.
        size: the world size.
        master_addr: host of rank 0 (default 127.0.0.1).
        master_port: port of the rendezvous store on rank 0 (default 29500).
        transport: ``"zmq"`` (default; ipc:// on one host, tcp:// across hosts), ``"mpi"``
            (MPI point-to-point through mpi4py; the default under an MPI launch) or
            ``"local"`` (ranks are threads of this process, for tests).
        timeout: seconds for the rendezvous and the default limit of every operation
            (``RINGCOMM_TIMEOUT_SECONDS``).
        config: tuning knobs; default :meth:`Config.from_env`.

    Raises:
        RendezvousError: the store could not be reached or hosted, or a rank did not join.
        ValueError: inconsistent world description.

    Example::

        comm = ringcomm.init(rank=0, size=2, master_addr="127.0.0.1", master_port=29500)
    """
    spec = _config.world_from(rank, size, master_addr, master_port, transport)
    cfg = config if config is not None else Config.from_env()
    if timeout is not None:
        cfg = dataclasses.replace(cfg, timeout_seconds=timeout)
    logs.configure(cfg.log_level)
    logs.set_rank(spec.rank)  # before the rendezvous: its records carry the rank too
    world, endpoints = form_world(spec, cfg)
    _log.debug("rank %d of %d joined over %s (%s)", spec.rank, spec.size, world.name, spec.source)
    return Communicator(world, cfg, endpoints)
