"""Every setting of ringcomm, declared once, and the one reader of ``RINGCOMM_*`` variables.

Each setting is one :func:`setting` field of :class:`Config` (or, for where a process sits
in the world, one entry of :data:`WORLD_SETTINGS`): its variable, type, default, unit,
meaning and bounds. Everything else is derived from that declaration: reading the
environment (:meth:`Config.from_env`), validation, :class:`Config`'s docstring, and the
table in ``docs/configuration.md`` (``python -m ringcomm configuration > docs/configuration.md``;
a test fails when the page is stale). Variables are read once per ``init``;
``init(config=Config(...))`` sets the same knobs in code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

# The algorithms each collective can be forced to (RINGCOMM_<OP>_ALGORITHM). "direct" runs
# on the shared-memory board (ranks of one host; elsewhere the choice by size).
ALLREDUCE_ALGORITHMS = (
    "direct",
    "recursive_doubling",
    "rabenseifner",
    "ring",
    "star",
    "hierarchical",
)
BROADCAST_ALGORITHMS = ("direct", "binomial", "chain")
ALLGATHER_ALGORITHMS = ("direct", "bruck", "ring")
REDUCE_SCATTER_ALGORITHMS = ("direct", "recursive_halving", "ring")
REDUCE_ALGORITHMS = ("direct", "binomial")
ALL_TO_ALL_ALGORITHMS = ("direct", "linear")
# Per collective: the algorithms it takes, and the Config field that forces one.
ALGORITHMS = {
    "all_reduce": ALLREDUCE_ALGORITHMS,
    "all_gather": ALLGATHER_ALGORITHMS,
    "reduce_scatter": REDUCE_SCATTER_ALGORITHMS,
    "broadcast": BROADCAST_ALGORITHMS,
    "reduce": REDUCE_ALGORITHMS,
    "all_to_all": ALL_TO_ALL_ALGORITHMS,
}
ALGORITHM_FIELDS = {
    "all_reduce": "allreduce_algorithm",
    "all_gather": "allgather_algorithm",
    "reduce_scatter": "reduce_scatter_algorithm",
    "broadcast": "broadcast_algorithm",
    "reduce": "reduce_algorithm",
    "all_to_all": "all_to_all_algorithm",
}
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes of ``4096``, ``4K``, ``16M``, ``1G`` (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * _SIZE_UNITS[unit])
    except ValueError:
        raise ValueError(f"{text!r} is not a size (bytes, or with K, M, G)") from None


def parse_algorithms(text: str, choices: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """``name`` (every size) or ``name:LO-HI;name:LO-;...`` (bytes from LO up to, not
    including, HI; sizes as :func:`parse_size`) as ``(name, lo, hi)`` ranges."""
    ranges = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, span = part.partition(":")
        name = name.strip()
        if name not in choices:
            raise ValueError(
                f"unknown algorithm {name!r} in {text!r}: expected one of {', '.join(choices)}"
            )
        lo, hi = 0, 1 << 62
        if span:
            a, sep, b = span.partition("-")
            if not sep:
                raise ValueError(f"{part!r} in {text!r}: expected name:LO-HI (HI may be empty)")
            lo = parse_size(a) if a.strip() else 0
            hi = parse_size(b) if b.strip() else hi
            if hi <= lo:
                raise ValueError(f"{part!r} in {text!r}: the range is empty")
        ranges.append((name, lo, hi))
    if not ranges:
        raise ValueError(f"no algorithm in {text!r}")
    return tuple(ranges)


def _algorithms(choices: tuple[str, ...]) -> Callable[[Any], None]:
    def validate(value: Any) -> None:
        parse_algorithms(value, choices)

    return validate


RING_ORDERS = ("hosts", "ranks")
HIERARCHY_MODES = ("auto", "off")
# auto: shared memory between ranks of one host, ZeroMQ sockets between hosts; shm: shared
# memory only (an error across hosts); zmq: sockets only; mpi: MPI point-to-point; local:
# thread ranks of one process (tests).
TRANSPORTS = ("auto", "shm", "zmq", "mpi", "local")
ZMQ_PROTOCOLS = ("auto", "tcp", "ipc")
# How collectives on GPU buffers run (ringcomm.gpu.engine): auto picks nccl when every rank
# has NCCL and its own GPU, else staging through pinned host memory.
GPU_PATHS = ("auto", "nccl", "staging")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# (rank, size) variables that MPI launchers set in every process they start:
# MPICH / Intel MPI / MVAPICH2 hydra, Open MPI.
MPI_LAUNCHER_VARIABLES = (
    ("PMI_RANK", "PMI_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
)
# A segment is one MPI message: keep its byte count an int on every MPI.
MAX_SEGMENT_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: where it comes from, what it means, and what values it takes.

    ``kind`` is ``int``, ``float``, ``bool`` (written 1 or 0) or ``str``; ``default_text``
    is how the documentation shows a default that is computed or set by someone else.
    """

    variable: str
    kind: type
    default: Any
    meaning: str
    unit: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    default_text: str = ""
    # "auto" in the environment means "choose for me": the field's None (or its default).
    auto_is_none: bool = False
    normalize: Callable[[str], str] | None = None  # applied to a str value as read
    validate: Callable[[Any], None] | None = None  # raises ValueError for a bad value
    name: str = ""  # the Config field (set by Config)

    def parse(self, raw: str) -> Any:
        """The value of ``raw`` (as found in the environment), checked."""
        if self.auto_is_none and raw == "auto":
            return None
        if self.kind in (int, bool):
            try:
                value: Any = int(raw)
            except ValueError:
                raise ValueError(f"{self.variable}={raw!r} is not an integer") from None
            return value != 0 if self.kind is bool else value
        if self.kind is float:
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"{self.variable}={raw!r} is not a number") from None
        return self.normalize(raw) if self.normalize is not None else raw

    def check(self, value: Any, label: str) -> None:
        """Raise ValueError when ``value`` is out of bounds (None always passes)."""
        if value is None or self.kind is bool:
            return
        if self.choices and value not in self.choices:
            raise ValueError(f"{label}={value!r}: expected one of {', '.join(self.choices)}")
        if self.validate is not None:
            try:
                self.validate(value)
            except ValueError as e:
                raise ValueError(f"{label}: {e}") from None
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{label} must be at least {self.minimum:g}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{label} must be at most {self.maximum:g}, got {value}")
        if self.multiple_of and value % self.multiple_of:
            raise ValueError(f"{label} must be a multiple of {self.multiple_of}, got {value}")

    def read(self, env: Mapping[str, str]) -> tuple[bool, Any]:
        """``(found, value)`` of this setting in ``env`` (an empty variable is unset)."""
        raw = env.get(self.variable)
        if raw is None or raw == "":
            return False, None
        value = self.parse(raw)
        self.check(value, self.variable)
        return True, value

    @property
    def shown_default(self) -> str:
        if self.default_text:
            return self.default_text
        if self.kind is bool:
            return str(int(self.default))
        if self.default is None:
            return "unset"
        return str(self.default)


def setting(default: Any, variable: str, kind: type, meaning: str, **more: Any) -> Any:
    """A :class:`Config` field declared with its :class:`Setting`."""
    decl = Setting(variable, kind, default, meaning, **more)
    return dataclasses.field(
        default=default,
        metadata={"setting": decl},
        repr=kind is not str or "SECRET" not in variable,
    )


_AUTO = "unset or `auto`: chosen by size"


def _forced_algorithm(op: str, variable: str, choices: tuple[str, ...], note: str = "") -> Any:
    """The setting that forces ``op``'s algorithm, as RINGCOMM_ALLREDUCE_ALGORITHM does
    (``note``: where a name cannot run, what runs instead)."""
    names = ", ".join(f"`{c}`" for c in choices)
    return setting(
        None,
        variable,
        str,
        f"force the {op} algorithm, as RINGCOMM_ALLREDUCE_ALGORITHM: one of {names}, or one "
        f"per size range{note}",
        validate=_algorithms(choices),
        auto_is_none=True,
        default_text=_AUTO,
    )


def _job_id(raw: str) -> str:
    return "".join(c for c in raw if c.isalnum())[:32] or "0"


@dataclasses.dataclass(frozen=True)
class Config:
    """Tuning and safety knobs of one communicator (and the sub-communicators split from it).

    Each field is one ``RINGCOMM_*`` variable; the attribute list below is generated from
    the declarations (see :mod:`ringcomm.config`).
    """

    timeout_seconds: float = setting(
        300.0,
        "RINGCOMM_TIMEOUT_SECONDS",
        float,
        "limit of every blocking operation and of the rendezvous",
        unit="s",
        minimum=1e-9,
        default_text="300",
    )
    segment_bytes: int = setting(
        1 << 20,
        "RINGCOMM_SEGMENT_BYTES",
        int,
        "bytes per segment on the wire, the unit of pipelining (at most 1 GiB, so one MPI "
        "message's count is an int; tests set it small to exercise the many-segment path)",
        unit="bytes",
        minimum=64,
        maximum=MAX_SEGMENT_BYTES,
    )
    close_timeout_seconds: float = setting(
        30.0,
        "RINGCOMM_CLOSE_TIMEOUT_SECONDS",
        float,
        "how long `close()` (and the close of every communicator left open at interpreter "
        "exit) waits for queued and running operations before it fails them and returns",
        unit="s",
        minimum=0,
        default_text="30",
    )
    zero_copy_bytes: int = setting(
        64 << 10,
        "RINGCOMM_ZERO_COPY_BYTES",
        int,
        "segments this large leave from the caller's memory without a copy; smaller ones "
        "are copied, which is cheaper than tracking them",
        unit="bytes",
        minimum=0,
    )
    small_message_bytes: int = setting(
        2 << 20,
        "RINGCOMM_SMALL_MESSAGE_BYTES",
        int,
        "point-to-point all_reduce from this size up uses the ring; below it recursive "
        "doubling (on more than two ranks only below 256 KiB; from there Rabenseifner's "
        "algorithm on a power of two of ranks, the ring on others; measured crossovers: "
        "see ringcomm.algorithms.choice)",
        unit="bytes",
        minimum=0,
    )
    fusion_bytes: int = setting(
        4 << 20,
        "RINGCOMM_FUSION_BYTES",
        int,
        "in a `group()`, all_reduce buffers smaller than this are packed, per dtype and "
        "op, into fusion buffers of at most this size and reduced as one (Horovod's "
        "fusion threshold); larger ones are reduced in place, with no copy; 0: no fusion",
        unit="bytes",
        minimum=0,
    )
    allreduce_algorithm: str | None = setting(
        None,
        "RINGCOMM_ALLREDUCE_ALGORITHM",
        str,
        "force the all_reduce algorithm: one of `direct` (the shared-memory board), "
        "`recursive_doubling`, `rabenseifner`, `ring`, `star`, `hierarchical`, or one per "
        "size range, "
        "`direct:0-256K;ring:256K-` (sizes left out are chosen as by default; `direct` "
        "where the ranks span hosts and `hierarchical` where it cannot run are the default "
        "too)",
        validate=_algorithms(ALLREDUCE_ALGORITHMS),
        auto_is_none=True,
        default_text=_AUTO,
    )
    allgather_algorithm: str | None = _forced_algorithm(
        "all_gather", "RINGCOMM_ALLGATHER_ALGORITHM", ALLGATHER_ALGORITHMS
    )
    reduce_scatter_algorithm: str | None = _forced_algorithm(
        "reduce_scatter",
        "RINGCOMM_REDUCE_SCATTER_ALGORITHM",
        REDUCE_SCATTER_ALGORITHMS,
        " (`recursive_halving` where the world is not a power of two is the ring)",
    )
    broadcast_algorithm: str | None = _forced_algorithm(
        "broadcast", "RINGCOMM_BROADCAST_ALGORITHM", BROADCAST_ALGORITHMS
    )
    reduce_algorithm: str | None = _forced_algorithm(
        "reduce", "RINGCOMM_REDUCE_ALGORITHM", REDUCE_ALGORITHMS
    )
    all_to_all_algorithm: str | None = _forced_algorithm(
        "all_to_all", "RINGCOMM_ALL_TO_ALL_ALGORITHM", ALL_TO_ALL_ALGORITHMS
    )
    tune_file: str = setting(
        "",
        "RINGCOMM_TUNE_FILE",
        str,
        "the file of measured algorithm choices `bench/tune.py` writes, read at init "
        "(where it has an entry for the transport and world size, it chooses for every "
        "operation and size not forced by the variables above); `none`: read none",
        default_text="`$XDG_CACHE_HOME/ringcomm/tune.json` (`~/.cache` without it)",
    )
    hierarchy: str = setting(
        "auto",
        "RINGCOMM_HIERARCHY",
        str,
        "`auto`: across hosts with as many ranks on each, all_reduce, all_gather and "
        "reduce_scatter run hierarchically (inside each host, then across); `off`: flat",
        choices=HIERARCHY_MODES,
    )
    ring_order: str = setting(
        "hosts",
        "RINGCOMM_RING_ORDER",
        str,
        "the order flat all_reduce, broadcast and reduce algorithms visit ranks in: "
        "`hosts` (host by host, so a ring or chain leaves each host once whatever the "
        "placement) or `ranks` (rank order)",
        choices=RING_ORDERS,
    )
    zmq_protocol: str = setting(
        "auto",
        "RINGCOMM_ZMQ_PROTOCOL",
        str,
        "`auto` (ipc:// between ranks of one host, tcp:// across hosts), `tcp` or `ipc`",
        choices=ZMQ_PROTOCOLS,
    )
    socket_window_bytes: int = setting(
        8 << 20,
        "RINGCOMM_SOCKET_WINDOW_BYTES",
        int,
        "credit window per peer on ZeroMQ sockets: a sender has at most this many bytes of "
        "collective messages in flight to a peer until the peer's algorithm takes them (at "
        "least two segments), so a slow receiver holds at most about this much; 0: no flow "
        "control (a slow receiver's frames pile up without limit)",
        unit="bytes",
        minimum=0,
    )
    unmatched_bytes: int = setting(
        1 << 30,
        "RINGCOMM_UNMATCHED_BYTES",
        int,
        "bytes of messages a rank keeps that no receive has asked for yet (a peer ahead, a "
        "send before its recv); past it the operation fails with a TransportError naming "
        "the peer and tag that hold the most, instead of memory growing without bound; 0: "
        "no limit",
        unit="bytes",
        minimum=0,
    )
    zmq_io_threads: int = setting(
        1, "RINGCOMM_ZMQ_IO_THREADS", int, "ZeroMQ I/O threads per process", minimum=1
    )
    linger_seconds: float = setting(
        2.0,
        "RINGCOMM_LINGER_SECONDS",
        float,
        "how long `close()` lets unsent messages drain",
        unit="s",
        minimum=0,
        default_text="2",
    )
    tune_malloc: bool = setting(
        False,
        "RINGCOMM_TUNE_MALLOC",
        bool,
        "1: fix glibc's malloc thresholds for the whole process, so received ZeroMQ frames "
        "reuse heap memory instead of page-faulting fresh mmaps. Off by default: it lasts "
        "past close() and slowed MPICH's 16 MiB allreduce in the same process 2.7x "
        "(bench/side_effects.py); with flow control on the sockets it no longer measurably "
        "helps ringcomm",
    )
    shm_slots: int = setting(
        4,
        "RINGCOMM_SHM_SLOTS",
        int,
        "slots per shared-memory inbox: how far a sender may run ahead of its receiver",
        minimum=2,
    )
    shm_slot_bytes: int = setting(
        1 << 20,
        "RINGCOMM_SHM_SLOT_BYTES",
        int,
        "bytes per slot, the unit in which a receiver reduces while the sender writes the "
        "next; each rank allocates slots x slot bytes per peer on its host in /dev/shm "
        "(smaller slots are used, with a warning, where /dev/shm is short)",
        unit="bytes",
        minimum=64,
        multiple_of=64,
    )
    shm_board_bytes: int = setting(
        1 << 20,
        "RINGCOMM_SHM_BOARD_BYTES",
        int,
        "bytes of each of the two areas a rank publishes collective data in on the "
        "shared-memory board (made on a communicator's first direct collective, where all "
        "its ranks share the host); larger operations go through it in pieces of this "
        "size; 0: no board, point-to-point algorithms only",
        unit="bytes",
        minimum=0,
        multiple_of=64,
    )
    shm_board_native: bool = setting(
        True,
        "RINGCOMM_SHM_BOARD_NATIVE",
        bool,
        "1: a collective that fits one board area (and a one-step all_reduce or reduce) "
        "runs its publish and its read each in one native call (`ringcomm.native.board`); "
        "0: in Python steps, to compare",
    )
    shm_by_address_bytes: int = setting(
        256 << 10,
        "RINGCOMM_SHM_BY_ADDRESS_BYTES",
        int,
        "on shared memory, segments this large are read by the receiver from the sender's "
        "memory in one copy (`process_vm_readv`) where the OS allows it; 0 turns it off",
        unit="bytes",
        minimum=0,
    )
    shm_board_by_address_bytes: int = setting(
        16 << 10,
        "RINGCOMM_SHM_BOARD_BY_ADDRESS_BYTES",
        int,
        "on the shared-memory board, data this large a rank is read where it lies, in one "
        "copy (`process_vm_readv`), where every rank allows it, instead of through the "
        "owner's area: broadcast data, all_gather inputs, each reduce_scatter chunk, each "
        "all_reduce slice (from 64 KiB). Rank 0's size holds for every rank; 0, or "
        "`RINGCOMM_SHM_BY_ADDRESS_BYTES=0`, on any rank turns it off for all",
        unit="bytes",
        minimum=0,
    )
    shm_board_shared_cache: bool | None = setting(
        None,
        "RINGCOMM_SHM_BOARD_SHARED_CACHE",
        bool,
        "1: the cores of this host's ranks share a cache, so all_reduces from 64 KiB go "
        "through the areas in pieces; 0: they do not, all_reduce slices are read where they "
        "lie from `RINGCOMM_SHM_BOARD_BY_ADDRESS_BYTES` up, and so is all copied data (see "
        "`RINGCOMM_SHM_BOARD_AREA_COPIES`); unset or `auto`: rank 0 times copying 64 KiB "
        "its peers just wrote against its own when a board is made. Rank 0's setting "
        "decides for every rank",
        auto_is_none=True,
        default_text="auto",
    )
    shm_board_area_copies: bool | None = setting(
        None,
        "RINGCOMM_SHM_BOARD_AREA_COPIES",
        bool,
        "1: broadcast data, all_gather inputs and reduce_scatter inputs up to 512 KiB (and "
        "an area) go through the area (the publisher's copy in, the reader's out), and "
        "broadcasts up to 2 MiB and all_gathers (at n=2 up to 2 MiB) in pieces through "
        "the areas; 0: from `RINGCOMM_SHM_BOARD_BY_ADDRESS_BYTES` up they are read where "
        "they lie; unset or `auto`: as `RINGCOMM_SHM_BOARD_SHARED_CACHE` where that is set "
        "(or its probe says the cores share no cache), else rank 0 times 64 KiB broadcasts "
        "through the areas against by address when a board is made. Rank 0's setting "
        "decides for every rank",
        auto_is_none=True,
        default_text="auto",
    )
    shm_board_stream_bytes: int | None = setting(
        None,
        "RINGCOMM_SHM_BOARD_STREAM_BYTES",
        int,
        "an all_gather on the shared-memory board (in its native calls) whose data on this "
        "host, every rank's output and its input where that lies apart, is at least this "
        "large writes its output with streaming stores, around the caches it would not stay "
        "in; 0: never; unset or `auto`: 1.25 times the last-level cache (32 MiB where the "
        "OS does not say), at most 96 MiB, never where the host's ranks outnumber its cores",
        unit="bytes",
        minimum=0,
        auto_is_none=True,
        default_text="auto",
    )
    job_id: str = setting(
        "0",
        "RINGCOMM_JOB_ID",
        str,
        "prefixes this job's /dev/shm names, so the launcher can remove what a killed rank "
        "left (letters and digits, at most 32)",
        default_text="set by `ringcomm-run`; else 0",
        normalize=_job_id,
    )
    mpi_abort_on_error: bool = setting(
        True,
        "RINGCOMM_MPI_ABORT_ON_ERROR",
        bool,
        "under an MPI launch, an exception that ends the main thread calls `MPI_Abort`, so "
        "no rank is left waiting",
    )
    gpu_path: str = setting(
        "auto",
        "RINGCOMM_GPU_PATH",
        str,
        "collectives on GPU buffers: `auto` (NCCL when every rank has it and its own GPU, "
        "else staging), `nccl`, `staging` (see docs/gpu.md)",
        choices=GPU_PATHS,
    )
    gpu_chunk_bytes: int = setting(
        4 << 20,
        "RINGCOMM_GPU_CHUNK_BYTES",
        int,
        "staged all_reduce/broadcast/reduce move between GPU and host in chunks of this size, "
        "overlapping the copies with the transfers",
        unit="bytes",
        minimum=64,
    )
    stall_warning_seconds: float | None = setting(
        None,
        "RINGCOMM_STALL_WARNING_SECONDS",
        float,
        "log a WARNING when an operation has run this long, naming the rank it waits for; 0: never",
        unit="s",
        minimum=0,
        default_text="a fifth of the timeout, at most 60",
    )
    flight_recorder_ops: int = setting(
        32,
        "RINGCOMM_FLIGHT_RECORDER_OPS",
        int,
        "operations each communicator remembers and logs when one fails on a timeout, a lost "
        "peer or a transport error; 0: off (it costs about 0.2 us per blocking call)",
        minimum=0,
    )
    flight_recorder_dir: str | None = setting(
        None,
        "RINGCOMM_FLIGHT_RECORDER_DIR",
        str,
        "a directory: on a timeout, a lost peer or a transport error, each rank also writes "
        "its flight recorder there (`ringcomm-<comm>-rank<R>.json`); `python -m "
        "ringcomm.trace DIR` merges the ranks' files and says who is behind",
    )
    debug: bool = setting(
        False,
        "RINGCOMM_DEBUG",
        bool,
        "1: before every collective, check that all ranks call the same operation with the "
        "same count, dtype, op and root (one small allgather more per operation)",
    )
    stats: bool = setting(
        False,
        "RINGCOMM_STATS",
        bool,
        "1: count and time every operation per size (`comm.stats()`), and print each "
        "communicator's table to stderr at close",
    )
    timeline: str | None = setting(
        None,
        "RINGCOMM_TIMELINE",
        str,
        "a path prefix: each rank writes a Chrome trace `<prefix>.rank<R>.json` of every "
        "operation and its steps",
    )
    secret: str | None = setting(
        None,
        "RINGCOMM_SECRET",
        str,
        "the job secret every ZeroMQ connection (rendezvous store and data) must present; "
        "unset: no check (see docs/security.md)",
        default_text="made by `ringcomm-run` and by MPI launches; else unset",
    )
    encrypt: bool = setting(
        False,
        "RINGCOMM_ENCRYPT",
        bool,
        "1: encrypt and authenticate all socket traffic with CurveZMQ, keys derived from the "
        "secret",
    )
    socket_ifname: str | None = setting(
        None,
        "RINGCOMM_SOCKET_IFNAME",
        str,
        "the interface data sockets bind to, as NCCL_SOCKET_IFNAME reads it: `eth0`, `eth,ib` "
        "(prefixes), `=eth0` (exact), `^lo,docker` (all but these); unset: the one that "
        "routes to the master (under MPI, to another host of the job)",
    )
    log_level: str | None = setting(
        None,
        "RINGCOMM_LOG_LEVEL",
        str,
        "e.g. `DEBUG`: print the `ringcomm` logger's records to stderr at that level, each "
        "with its rank (`ringcomm[rank 3] WARNING ...`), from `init` on. Every record also "
        "carries `record.rank` (`%(rank)s`) for your own handlers",
        choices=LOG_LEVELS,
        normalize=str.upper,
    )

    def __post_init__(self) -> None:
        for decl in settings():
            decl.check(getattr(self, decl.name), decl.name)
        if self.encrypt and not self.secret:
            raise ValueError(
                "RINGCOMM_ENCRYPT=1 needs a job secret: set RINGCOMM_SECRET (ringcomm-run and "
                "MPI launches make one)"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Build a Config from ``RINGCOMM_*`` variables (defaults where unset)."""
        env = os.environ if env is None else env
        values = {}
        for decl in settings():
            found, value = decl.read(env)
            if found:
                values[decl.name] = value
        return cls(**values)

    def stall_limit(self, timeout: float) -> float:
        """Seconds after which a running operation with ``timeout`` is reported stalled
        (``inf``: never)."""
        if self.stall_warning_seconds is None:
            return min(60.0, timeout / 5)
        return self.stall_warning_seconds or float("inf")


def settings() -> Iterator[Setting]:
    """Every :class:`Config` setting, in declaration order."""
    return iter(_SETTINGS)


def _declared() -> list[Setting]:
    found = []
    for f in dataclasses.fields(Config):
        decl = f.metadata["setting"]
        object.__setattr__(decl, "name", f.name)
        found.append(decl)
    return found


_SETTINGS = _declared()
Config.__doc__ = (
    (Config.__doc__ or "")
    + "\n    Attributes:\n"
    + "".join(f"        {d.name}: {d.meaning} (``{d.variable}``).\n" for d in _SETTINGS)
)


# Where this process sits in the world. Not Config fields: :func:`world_from` resolves them
# together with their torchrun and MPI equivalents (arguments first).
WORLD_SETTINGS = (
    Setting(
        "RINGCOMM_RANK",
        int,
        0,
        "this rank",
        name="rank",
        default_text="torchrun's `RANK`; an MPI launcher's rank; else 0",
    ),
    Setting(
        "RINGCOMM_SIZE",
        int,
        1,
        "the world size",
        name="size",
        default_text="torchrun's `WORLD_SIZE`; an MPI launcher's size; else 1",
    ),
    Setting(
        "RINGCOMM_MASTER_ADDR",
        str,
        "127.0.0.1",
        "host of rank 0, which hosts the rendezvous store during `init`",
        name="master_addr",
        default_text="`MASTER_ADDR`; else 127.0.0.1",
    ),
    Setting(
        "RINGCOMM_MASTER_PORT",
        int,
        29500,
        "port of the rendezvous store on rank 0",
        name="master_port",
        minimum=0,
        maximum=65535,
        default_text="`MASTER_PORT`; else 29500",
    ),
    Setting(
        "RINGCOMM_TRANSPORT",
        str,
        "auto",
        "`auto` (shared memory between ranks of one host, ZeroMQ sockets between hosts), "
        "`shm` (shared memory only: an error for a rank on another host), `zmq` (sockets "
        "only), `mpi`, or `local` (ranks are threads of one process, for tests)",
        name="transport",
        choices=TRANSPORTS,
        default_text="`auto`; `mpi` under an MPI launch",
    ),
)
_WORLD = {s.name: s for s in WORLD_SETTINGS}


def env_value(variable: str, env: Mapping[str, str] | None = None) -> str | None:
    """The raw value of a declared ``RINGCOMM_*`` variable (None when unset or empty), for
    the few readers that need it before a Config exists (the launcher)."""
    if variable not in {s.variable for s in (*_SETTINGS, *WORLD_SETTINGS)}:
        raise KeyError(f"{variable} is not a declared ringcomm setting")
    env = os.environ if env is None else env
    return env.get(variable) or None


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

    r, r_src = pick(rank, _WORLD["rank"].variable, "RANK")
    s, s_src = pick(size, _WORLD["size"].variable, "WORLD_SIZE")
    a, _ = pick(master_addr, _WORLD["master_addr"].variable, "MASTER_ADDR")
    p, p_src = pick(master_port, _WORLD["master_port"].variable, "MASTER_PORT")
    t, _ = pick(transport, _WORLD["transport"].variable)
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


def markdown() -> str:
    """``docs/configuration.md``, generated from the declarations."""

    def row(d: Setting) -> str:
        unit = f" ({d.unit})" if d.unit else ""
        choices = f" One of {', '.join(f'`{c}`' for c in d.choices)}." if d.choices else ""
        return f"| `{d.variable}` | {d.shown_default}{unit} | {d.meaning}.{choices} |\n"

    head = "| variable | default | meaning |\n|---|---|---|\n"
    return (
        "# Configuration\n\n"
        "<!-- Generated by `python -m ringcomm configuration > docs/configuration.md` from the\n"
        "     declarations in ringcomm/config.py; tests/test_docs.py fails when it is\n"
        "     stale. -->\n\n"
        "Every knob is one environment variable, read once per `ringcomm.init()` (and by\n"
        "`ringcomm.torch`'s backend at group creation). `init(config=ringcomm.Config(...))`\n"
        "sets the same knobs in code: each `RINGCOMM_X_Y` is the field `x_y` of `Config`.\n"
        "A value out of bounds is a `ValueError` at `init` naming the variable. Booleans\n"
        "are written 1 or 0.\n\n"
        "## Where the process sits in the world\n\n"
        "Arguments to `init()` come first, then these, then torchrun's and MPI's variables.\n\n"
        + head
        + "".join(row(d) for d in WORLD_SETTINGS)
        + "\n## Tuning, safety and diagnostics\n\n"
        + head
        + "".join(row(d) for d in _SETTINGS)
    )
