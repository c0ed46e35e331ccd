"""Runtime options: the only place that reads ``RINGCOMM_*`` (and the launcher's) environment.

Every knob is one environment variable with its unit in the name, read once when a
communicator is made; ``init(config=Config(...))`` overrides them in code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

ALLREDUCE_ALGORITHMS = ("ring", "recursive_doubling", "star")
BROADCAST_ALGORITHMS = ("binomial", "chain")
# auto: shared memory between ranks of one host, ZeroMQ sockets between hosts; shm: shared
# memory only (an error across hosts); zmq: sockets only; mpi: MPI point-to-point; local:
# thread ranks of one process (tests).
TRANSPORTS = ("auto", "shm", "zmq", "mpi", "local")
ZMQ_PROTOCOLS = ("auto", "tcp", "ipc")
# How collectives on GPU buffers run (ringcomm.gpu.engine): auto picks nccl when every rank
# has NCCL and its own GPU, else staging through pinned host memory.
GPU_PATHS = ("auto", "nccl", "staging")
# (rank, size) variables that MPI launchers set in every process they start:
# MPICH / Intel MPI / MVAPICH2 hydra, Open MPI.
MPI_LAUNCHER_VARIABLES = (
    ("PMI_RANK", "PMI_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
)
# A segment is one MPI message: keep its byte count an int on every MPI.
MAX_SEGMENT_BYTES = 1 << 30


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = env.get(name)
    if raw is None or raw == "" or (raw == "auto" and "auto" not in choices):
        return None
    if raw not in choices:
        raise ValueError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


@dataclasses.dataclass(frozen=True)
class Config:
    """Tuning and safety knobs of one communicator (and the sub-communicators split from it).

    Attributes:
        timeout_seconds: limit of every blocking operation (``RINGCOMM_TIMEOUT_SECONDS``).
        segment_bytes: bytes per segment on the wire (``RINGCOMM_SEGMENT_BYTES``): the unit of
            pipelining. Tests set it small to exercise the many-segment path.
        zero_copy_bytes: segments at least this large are sent from the user's memory without
            a copy (``RINGCOMM_ZERO_COPY_BYTES``); smaller ones are copied, which is cheaper
            than tracking them.
        small_message_bytes: all_reduce below this size uses recursive doubling, from it up
            the ring (``RINGCOMM_SMALL_MESSAGE_BYTES``; measured crossover: see
            :mod:`ringcomm.algorithms`).
        allreduce_algorithm: force one of ``ring``, ``recursive_doubling``, ``star``
            (``RINGCOMM_ALLREDUCE_ALGORITHM``; unset or ``auto`` chooses by size).
        broadcast_algorithm: force ``binomial`` or ``chain`` (``RINGCOMM_BROADCAST_ALGORITHM``).
        zmq_protocol: ``auto`` (ipc:// between ranks of one host, tcp:// otherwise), ``tcp``
            or ``ipc`` (``RINGCOMM_ZMQ_PROTOCOL``).
        zmq_io_threads: ZeroMQ I/O threads per process (``RINGCOMM_ZMQ_IO_THREADS``).
        linger_seconds: how long close() lets unsent messages drain (``RINGCOMM_LINGER_SECONDS``).
        tune_malloc: fix glibc's malloc thresholds so received segments reuse heap memory
            instead of page-faulting fresh mmaps (``RINGCOMM_TUNE_MALLOC``, 1 or 0); see
            :func:`ringcomm.transport.heap.tune_malloc`.
        shm_slots: slots per shared-memory inbox (``RINGCOMM_SHM_SLOTS``): how far a sender
            may run ahead of its receiver.
        shm_slot_bytes: bytes per slot (``RINGCOMM_SHM_SLOT_BYTES``), the unit in which a
            receiver reduces while the sender writes the next one. Each rank's segment
            holds ``shm_slots * shm_slot_bytes`` per peer on its host.
        shm_by_address_bytes: on shared memory, segments at least this large are not copied
            through the slots: the receiver reads them from the sender's memory in one copy
            (``process_vm_readv``) where the OS allows it (``RINGCOMM_SHM_BY_ADDRESS_BYTES``;
            0 turns it off).
        mpi_abort_on_error: under an MPI launch, an exception that ends the main thread
            calls ``MPI_Abort`` so no rank is left waiting (``RINGCOMM_MPI_ABORT_ON_ERROR``,
            1 or 0).
        gpu_path: ``auto``, ``nccl`` or ``staging``: how collectives on GPU buffers run
            (``RINGCOMM_GPU_PATH``; see :mod:`ringcomm.gpu.engine`).
        gpu_chunk_bytes: staged all_reduce/broadcast/reduce copy between GPU and host in
            chunks of this many bytes, overlapping the copies with the transfers
            (``RINGCOMM_GPU_CHUNK_BYTES``).
        stall_warning_seconds: log a warning when an operation has run this long (0: never;
            default a fifth of its timeout, at most 60 s) (``RINGCOMM_STALL_WARNING_SECONDS``).
        flight_recorder_ops: operations each communicator remembers for the log when one
            fails (``RINGCOMM_FLIGHT_RECORDER_OPS``; 0 turns it off).
        debug: before every collective, check that all ranks call the same operation with
            the same count, dtype, op and root (one small allgather more per operation)
            (``RINGCOMM_DEBUG``, 1 or 0).
        timeline: write a Chrome trace of every operation and step to
            ``<timeline>.rank<R>.json`` (``RINGCOMM_TIMELINE``; unset: none).
        secret: the job secret every ZeroMQ connection must present (``RINGCOMM_SECRET``;
            ringcomm-run and MPI launches make one; None: no check). See
            :mod:`ringcomm.security`.
        encrypt: encrypt and authenticate all socket traffic with CurveZMQ, keys derived
            from the secret (``RINGCOMM_ENCRYPT``, 1 or 0).
        socket_ifname: the interface data sockets bind to, as NCCL_SOCKET_IFNAME reads it
            (``eth0``, ``eth,ib``, ``=eth0``, ``^lo,docker``) (``RINGCOMM_SOCKET_IFNAME``;
            unset: the interface that routes to the master, or under MPI to another host).
    """

    timeout_seconds: float = 300.0
    segment_bytes: int = 1 << 20
    zero_copy_bytes: int = 64 << 10
    small_message_bytes: int = 2 << 20
    allreduce_algorithm: str | None = None
    broadcast_algorithm: str | None = None
    zmq_protocol: str = "auto"
    zmq_io_threads: int = 1
    linger_seconds: float = 2.0
    tune_malloc: bool = True
    shm_slots: int = 4
    shm_slot_bytes: int = 1 << 20
    shm_by_address_bytes: int = 256 << 10
    mpi_abort_on_error: bool = True
    gpu_path: str = "auto"
    gpu_chunk_bytes: int = 4 << 20
    stall_warning_seconds: float | None = None
    flight_recorder_ops: int = 32
    debug: bool = False
    timeline: str | None = None
    secret: str | None = dataclasses.field(default=None, repr=False)
    encrypt: bool = False
    socket_ifname: str | None = None

    def __post_init__(self) -> None:
        if self.timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, got {self.timeout_seconds}")
        if not 64 <= self.segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(
                f"segment_bytes must be in 64..{MAX_SEGMENT_BYTES}, got {self.segment_bytes}"
            )
        for value, choices, name in (
            (self.allreduce_algorithm, ALLREDUCE_ALGORITHMS, "allreduce_algorithm"),
            (self.broadcast_algorithm, BROADCAST_ALGORITHMS, "broadcast_algorithm"),
        ):
            if value is not None and value not in choices:
                raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
        if self.shm_slots < 2:
            raise ValueError(f"shm_slots must be at least 2, got {self.shm_slots}")
        if self.shm_slot_bytes < 64 or self.shm_slot_bytes % 64:
            raise ValueError(
                f"shm_slot_bytes must be a positive multiple of 64, got {self.shm_slot_bytes}"
            )
        if self.shm_by_address_bytes < 0:
            raise ValueError(
                f"shm_by_address_bytes must be >= 0 (0: off), got {self.shm_by_address_bytes}"
            )
        if self.gpu_path not in GPU_PATHS:
            raise ValueError(f"gpu_path={self.gpu_path!r}: expected one of {GPU_PATHS}")
        if self.stall_warning_seconds is not None and self.stall_warning_seconds < 0:
            raise ValueError(
                f"stall_warning_seconds must be >= 0 (0: never), got {self.stall_warning_seconds}"
            )
        if self.flight_recorder_ops < 0:
            raise ValueError(f"flight_recorder_ops must be >= 0, got {self.flight_recorder_ops}")
        if self.encrypt and not self.secret:
            raise ValueError(
                "RINGCOMM_ENCRYPT=1 needs a job secret: set RINGCOMM_SECRET (ringcomm-run and "
                "MPI launches make one)"
            )
        if self.gpu_chunk_bytes < 64:
            raise ValueError(f"gpu_chunk_bytes must be at least 64, got {self.gpu_chunk_bytes}")
        if self.zmq_protocol not in ZMQ_PROTOCOLS:
            raise ValueError(f"zmq_protocol={self.zmq_protocol!r}: expected one of {ZMQ_PROTOCOLS}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Build a Config from ``RINGCOMM_*`` variables (defaults where unset)."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            timeout_seconds=_float(env, "RINGCOMM_TIMEOUT_SECONDS", d.timeout_seconds),
            segment_bytes=_int(env, "RINGCOMM_SEGMENT_BYTES", d.segment_bytes),
            zero_copy_bytes=_int(env, "RINGCOMM_ZERO_COPY_BYTES", d.zero_copy_bytes),
            small_message_bytes=_int(env, "RINGCOMM_SMALL_MESSAGE_BYTES", d.small_message_bytes),
            allreduce_algorithm=_choice(env, "RINGCOMM_ALLREDUCE_ALGORITHM", ALLREDUCE_ALGORITHMS),
            broadcast_algorithm=_choice(env, "RINGCOMM_BROADCAST_ALGORITHM", BROADCAST_ALGORITHMS),
            zmq_protocol=_choice(env, "RINGCOMM_ZMQ_PROTOCOL", ZMQ_PROTOCOLS) or "auto",
            zmq_io_threads=_int(env, "RINGCOMM_ZMQ_IO_THREADS", d.zmq_io_threads),
            linger_seconds=_float(env, "RINGCOMM_LINGER_SECONDS", d.linger_seconds),
            tune_malloc=_int(env, "RINGCOMM_TUNE_MALLOC", int(d.tune_malloc)) != 0,
            shm_slots=_int(env, "RINGCOMM_SHM_SLOTS", d.shm_slots),
            shm_slot_bytes=_int(env, "RINGCOMM_SHM_SLOT_BYTES", d.shm_slot_bytes),
            shm_by_address_bytes=_int(env, "RINGCOMM_SHM_BY_ADDRESS_BYTES", d.shm_by_address_bytes),
            mpi_abort_on_error=_int(env, "RINGCOMM_MPI_ABORT_ON_ERROR", int(d.mpi_abort_on_error))
            != 0,
            gpu_path=_choice(env, "RINGCOMM_GPU_PATH", GPU_PATHS) or "auto",
            gpu_chunk_bytes=_int(env, "RINGCOMM_GPU_CHUNK_BYTES", d.gpu_chunk_bytes),
            stall_warning_seconds=(
                _float(env, "RINGCOMM_STALL_WARNING_SECONDS", 0.0)
                if env.get("RINGCOMM_STALL_WARNING_SECONDS")
                else None
            ),
            flight_recorder_ops=_int(env, "RINGCOMM_FLIGHT_RECORDER_OPS", d.flight_recorder_ops),
            debug=_int(env, "RINGCOMM_DEBUG", 0) != 0,
            timeline=env.get("RINGCOMM_TIMELINE") or None,
            secret=env.get("RINGCOMM_SECRET") or None,
            encrypt=_int(env, "RINGCOMM_ENCRYPT", 0) != 0,
            socket_ifname=env.get("RINGCOMM_SOCKET_IFNAME") or None,
        )

    def stall_limit(self, timeout: float) -> float:
        """Seconds after which a running operation with ``timeout`` is reported stalled
        (``inf``: never)."""
        if self.stall_warning_seconds is None:
            return min(60.0, timeout / 5)
        return self.stall_warning_seconds or float("inf")


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """Where this process sits in the world, and where the rendezvous store is."""

    rank: int
    size: int
    master_addr: str
    master_port: int
    transport: str
    source: str  # which source supplied rank and size, for error messages
    mpi_launch: bool = False  # rank and size came from an MPI launcher (mpiexec, mpirun)


def mpi_launch(env: Mapping[str, str] | None = None) -> tuple[int, int, str] | None:
    """``(rank, size, variable)`` if an MPI launcher started this process, else None.

    Read from the launcher's environment, so nothing imports MPI just to look.
    """
    env = os.environ if env is None else env
    for rank_var, size_var in MPI_LAUNCHER_VARIABLES:
        if env.get(rank_var) and env.get(size_var):
            try:
                return int(env[rank_var]), int(env[size_var]), rank_var
            except ValueError:
                raise ValueError(
                    f"bad MPI launcher variables {rank_var}={env[rank_var]!r} "
                    f"{size_var}={env[size_var]!r}"
                ) from None
    return None


def world_from(
    rank: int | None,
    size: int | None,
    master_addr: str | None,
    master_port: int | None,
    transport: str | None,
    env: Mapping[str, str] | None = None,
) -> WorldSpec:
    """Resolve the world: explicit arguments, then ``RINGCOMM_*``, then torchrun's variables,
    then an MPI launcher's (``PMI_RANK``/``PMI_SIZE``, ``OMPI_COMM_WORLD_RANK``/``_SIZE``).

    The transport defaults to ``auto`` (shared memory on one host, sockets across hosts), or
    ``mpi`` under an MPI launch. Without any of them the world is this one process (rank 0
    of 1).
    """
    env = os.environ if env is None else env

    def pick(arg: object, *names: str) -> tuple[str | None, str]:
        if arg is not None:
            return str(arg), "arguments"
        for name in names:
            if env.get(name):
                return env[name], name
        return None, "default"

    r, r_src = pick(rank, "RINGCOMM_RANK", "RANK")
    s, s_src = pick(size, "RINGCOMM_SIZE", "WORLD_SIZE")
    a, _ = pick(master_addr, "RINGCOMM_MASTER_ADDR", "MASTER_ADDR")
    p, p_src = pick(master_port, "RINGCOMM_MASTER_PORT", "MASTER_PORT")
    t, _ = pick(transport, "RINGCOMM_TRANSPORT")
    launched = mpi_launch(env) if r is None and s is None else None
    if launched is not None:
        r, s, var = str(launched[0]), str(launched[1]), launched[2]
        r_src = s_src = var
    try:
        rank_i = int(r) if r is not None else 0
        size_i = int(s) if s is not None else 1
        port_i = int(p) if p is not None else 29500
    except ValueError as e:
        raise ValueError(f"bad world description ({r_src}/{s_src}/{p_src}): {e}") from None
    if size_i < 1 or not 0 <= rank_i < size_i:
        raise ValueError(f"rank {rank_i} is not in a world of size {size_i} (from {r_src}/{s_src})")
    if not 0 <= port_i < 65536:
        raise ValueError(f"master port {port_i} out of range (from {p_src})")
    transport_name = t or ("mpi" if launched is not None else "auto")
    if transport_name not in TRANSPORTS:
        raise ValueError(f"transport {transport_name!r}: expected one of {', '.join(TRANSPORTS)}")
    return WorldSpec(
        rank_i,
        size_i,
        a or "127.0.0.1",
        port_i,
        transport_name,
        f"{r_src}/{s_src}",
        mpi_launch=launched is not None,
    )


def log_level(env: Mapping[str, str] | None = None) -> str | None:
    """``RINGCOMM_LOG_LEVEL`` (e.g. ``DEBUG``), or None to leave logging alone."""
    env = os.environ if env is None else env
    return env.get("RINGCOMM_LOG_LEVEL") or None
