"""What a rank tells you about itself: the flight recorder, the stall watchdog and the
timeline.

- :class:`FlightRecorder`: each communicator keeps its last operations (sequence number,
  name, bytes, state, the peer it waits on, how long it took). When an operation fails on a
  timeout, a lost peer or a transport error, the record is logged at ERROR, so the stuck
  rank and operation can be read off every rank's log.
- The stall watchdog: one daemon thread per process looks at every live communicator once
  a second and logs a WARNING when an operation has run longer than its stall limit
  (``RINGCOMM_STALL_WARNING_SECONDS``, default a fifth of the timeout, at most 60 s), naming
  the peer it waits on, well before the timeout fails it.
- :class:`Timeline`: with ``RINGCOMM_TIMELINE=path``, each rank writes a Chrome trace
  (``path.rank<R>.json``; open it in Perfetto or chrome://tracing) with every operation and
  its steps (send, wait = receive, reduce, flush), like Horovod's timeline.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ringcomm.logs import get_logger

log = get_logger(__name__)


class OpRecord:
    """One operation as the flight recorder saw it."""

    __slots__ = ("deadline", "ended", "error", "name", "nbytes", "seq", "started", "warned")

    def __init__(self, seq: int, name: str, nbytes: int, deadline: float) -> None:
        self.deadline = deadline
        self.seq = seq
        self.name = name
        self.nbytes = nbytes
        self.started = time.monotonic()
        self.ended = 0.0
        self.error = ""
        self.warned = False

    def state(self, now: float) -> str:
        if not self.ended:
            return f"RUNNING for {now - self.started:.3f} s"
        took = f"{self.ended - self.started:.6f} s"
        return f"failed after {took}: {self.error}" if self.error else f"done in {took}"


class FlightRecorder:
    """The last ``capacity`` operations of one communicator (0: record nothing). Records
    are reused round-robin: nothing is allocated per operation."""

    def __init__(self, capacity: int) -> None:
        self.enabled = capacity > 0
        self._slots = [OpRecord(0, "", 0, 0.0) for _ in range(max(1, capacity))]
        self._capacity = len(self._slots)
        self._started = 0  # operations started, ever
        self.current: OpRecord | None = None

    @property
    def records(self) -> list[OpRecord]:
        """The recorded operations, oldest first."""
        n, started = self._capacity, self._started
        used = min(started, n)
        return [self._slots[(started - used + i) % n] for i in range(used)]

    def start(
        self, seq: int, name: str, nbytes: int, deadline: float, now: float | None = None
    ) -> OpRecord:
        """Record operation ``seq`` as started (``now``: its ``time.monotonic()``, where
        the caller has just read it) and running."""
        started = self._started
        self._started = started + 1
        record = self._slots[started % self._capacity]
        record.seq = seq
        record.name = name
        record.nbytes = nbytes
        record.deadline = deadline
        record.started = time.monotonic() if now is None else now
        record.ended = 0.0
        record.warned = False
        self.current = record
        return record

    def finish(self, record: OpRecord | None, error: BaseException | None = None) -> None:
        if record is None:
            return
        record.ended = time.monotonic()
        record.error = f"{type(error).__name__}: {error}" if error is not None else ""
        if self.current is record:
            self.current = None

    def to_dict(self, rank: int, size: int, comm_id: int, waiting_for: int | None) -> dict:
        """The records as data, for the per-rank file (times in wall-clock seconds)."""
        now, wall = time.monotonic(), time.time()
        rows = []
        for rec in self.records:
            state = "running" if not rec.ended else ("failed" if rec.error else "done")
            rows.append(
                {
                    "seq": rec.seq,
                    "op": rec.name,
                    "bytes": rec.nbytes,
                    "state": state,
                    "started": wall - (now - rec.started),
                    "seconds": (rec.ended or now) - rec.started,
                    "error": rec.error,
                }
            )
        return {
            "rank": rank,
            "size": size,
            "comm": f"{comm_id:016x}",
            "waiting_for": waiting_for,
            "written": wall,
            "operations": rows,
        }

    def write(
        self, directory: str, rank: int, size: int, comm_id: int, waiting_for: int | None
    ) -> str:
        """Write the records to ``directory/ringcomm-<comm>-rank<R>.json`` (read by
        ``python -m ringcomm.trace``); return the path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"ringcomm-{comm_id:016x}-rank{rank}.json")
        with open(path, "w") as f:
            json.dump(self.to_dict(rank, size, comm_id, waiting_for), f, indent=1)
        return path

    def dump(self, rank: int, size: int, waiting_for: int | None) -> str:
        now = time.monotonic()
        records = self.records
        lines = [
            f"ringcomm flight recorder, rank {rank} of {size}: last {len(records)} "
            f"operations, oldest first"
            + (f" (waiting for rank {waiting_for})" if waiting_for is not None else "")
        ]
        lines += [f"  {r.name} #{r.seq} {r.nbytes} B: {r.state(now)}" for r in self.records]
        return "\n".join(lines)


# -- the stall watchdog ------------------------------------------------------------------------
_watched: weakref.WeakSet[Any] = weakref.WeakSet()
_watchdog: threading.Thread | None = None
_watchdog_lock = threading.Lock()
_watchdog_wake = threading.Event()  # set when the last communicator closes
WATCHDOG_PERIOD_SECONDS = 1.0


def watch(comm: Any) -> None:
    """Have the watchdog call ``comm.stall_report(now)`` once a second and log what it
    returns (a warning, or None), until :func:`unwatch` (the thread ends with the last)."""
    global _watchdog
    with _watchdog_lock:
        _watched.add(comm)
        if _watchdog is None:
            _watchdog = threading.Thread(target=_watch_loop, name="ringcomm-watchdog", daemon=True)
            _watchdog.start()


def unwatch(comm: Any) -> None:
    """Stop watching ``comm`` (it closed); the thread ends at once with the last one."""
    with _watchdog_lock:
        _watched.discard(comm)
        thread = _watchdog if not _watched else None
    if thread is not None:
        _watchdog_wake.set()
        if thread is not threading.current_thread():
            thread.join(WATCHDOG_PERIOD_SECONDS + 1)


def _watch_loop() -> None:
    global _watchdog
    while True:
        if _watchdog_wake.wait(WATCHDOG_PERIOD_SECONDS):
            _watchdog_wake.clear()
        with _watchdog_lock:
            if not _watched:  # every communicator closed: no thread of ours stays behind
                _watchdog = None
                return
        now = time.monotonic()
        for comm in list(_watched):
            try:
                report = comm.stall_report(now)
            except Exception as e:  # the watchdog must never die
                log.debug("stall check failed: %s", e)
                continue
            if report:
                log.warning("%s", report)


# -- the timeline --------------------------------------------------------------------------
class Timeline:
    """Chrome trace events of one process, written to ``<prefix>.rank<R>.json`` when the
    process exits (and whenever a communicator closes)."""

    MAX_EVENTS = 1_000_000

    def __init__(self, prefix: str, rank: int) -> None:
        self.path = f"{prefix}.rank{rank}.json"
        self.rank = rank
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self.dropped = 0

    def now_us(self) -> float:
        return (time.perf_counter() - self._t0) * 1e6

    def add(
        self, name: str, start_us: float, args: dict[str, Any] | None = None, track: str = ""
    ) -> None:
        """A complete event ("X") from ``start_us`` until now, on ``track`` (a thread row)."""
        event = {
            "name": name,
            "ph": "X",
            "ts": round(start_us, 3),
            "dur": round(self.now_us() - start_us, 3),
            "pid": self.rank,
            "tid": track or threading.current_thread().name,
        }
        if args:
            event["args"] = args
        with self._lock:
            if len(self._events) < self.MAX_EVENTS:
                self._events.append(event)
            else:
                self.dropped += 1

    def write(self) -> None:
        with self._lock:
            events = list(self._events)
        meta = [
            {
                "name": "process_name",
                "ph": "M",
                "pid": self.rank,
                "args": {"name": f"ringcomm rank {self.rank}"},
            }
        ]
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"traceEvents": meta + events, "displayTimeUnit": "ms"}, f)
        os.replace(tmp, self.path)


_timelines: dict[tuple[str, int], Timeline] = {}


def timeline(prefix: str | None, rank: int) -> Timeline | None:
    """The process's timeline for ``prefix`` (None: no timeline)."""
    if not prefix:
        return None
    key = (prefix, rank)
    if key not in _timelines:
        _timelines[key] = Timeline(prefix, rank)
    return _timelines[key]


@atexit.register
def _write_timelines() -> None:
    for t in _timelines.values():
        try:
            t.write()
        except OSError as e:
            log.warning("could not write the timeline %s: %s", t.path, e)


def traced(ctx_methods: Iterable[str], base: type) -> type:
    """A subclass of the op context ``base`` whose ``ctx_methods`` each add a timeline event
    (named after the method, with the peer and bytes where there are some)."""

    def wrap(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        label = {"recv": "wait", "recv_into": "wait", "recv_reduce": "wait+reduce"}.get(name, name)

        def traced_method(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = self.timeline.now_us()
            try:
                return method(self, *args, **kwargs)
            finally:
                info: dict[str, Any] = {}
                if args and isinstance(args[0], int) and name != "reduce":
                    info["peer"] = args[0]
                    info["step"] = args[1] if len(args) > 1 else None
                data = args[-1] if args else None
                if hasattr(data, "nbytes"):
                    info["bytes"] = int(data.nbytes)
                self.timeline.add(label, start, info)

        traced_method.__name__ = name
        return traced_method

    namespace: dict[str, Any] = {"__slots__": ("timeline",)}
    for name in ctx_methods:
        namespace[name] = wrap(name, getattr(base, name))
    return type(f"Traced{base.__name__}", (base,), namespace)
