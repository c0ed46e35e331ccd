"""Per-operation statistics (``RINGCOMM_STATS=1``): what each communicator ran, by operation
and size, with times and bandwidths, as DeepSpeed's communication logger reports them.

Off by default, and then nothing is measured (the communicator holds no :class:`Stats`). On,
each finished operation costs two clock reads more and one dictionary update; the last
:data:`SAMPLES` durations per (operation, size) feed the percentiles.

Stragglers: each collective also notes when this rank arrived at it (the wall clock when it
began to run here). At close the ranks exchange the arrivals of their last :data:`SAMPLES`
collectives, once, and each row gains which rank arrived last most often, how often, and the
mean spread between the first and the last arrival. Ranks of one host share one clock; across
hosts the spread includes the hosts' clock offset (NTP keeps it to about a millisecond).
"""

from __future__ import annotations

import collections
import statistics
import sys
from typing import Any

import numpy as np

SAMPLES = 4096  # durations kept per (operation, size bucket); collectives' arrivals kept

Key = tuple[str, int]  # (operation, size bucket)

# nccl-tests' bus bandwidth factors: what each rank's link carries relative to algbw.
_BUS = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
}


def bucket(nbytes: int) -> int:
    """The size bucket of ``nbytes``: the next power of two (0 for empty operations)."""
    return 0 if nbytes <= 0 else 1 << (nbytes - 1).bit_length()


class _Entry:
    __slots__ = ("count", "nbytes", "seconds", "total_seconds")

    def __init__(self) -> None:
        self.count = 0
        self.nbytes = 0
        self.total_seconds = 0.0
        self.seconds: collections.deque[float] = collections.deque(maxlen=SAMPLES)


class _Stragglers:
    __slots__ = ("last", "ops", "spread_ns")

    def __init__(self) -> None:
        self.ops = 0
        self.spread_ns = 0
        self.last: collections.Counter[int] = collections.Counter()


class Stats:
    """Counts, bytes and times of one communicator's finished operations."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[Key, _Entry] = {}
        # (sequence number, key, wall-clock ns when this rank began it) of recent collectives
        self._arrivals: collections.deque[tuple[int, Key, int]] = collections.deque(maxlen=SAMPLES)
        self._stragglers: dict[Key, _Stragglers] = {}

    def add(
        self,
        name: str,
        nbytes: int,
        seconds: float,
        seq: int | None = None,
        arrived_ns: int = 0,
    ) -> None:
        """Record one finished operation of ``nbytes`` (its largest buffer) that took
        ``seconds``; a collective also gives its sequence number and when it began here."""
        key = (name, bucket(nbytes))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.count += 1
        entry.nbytes += nbytes
        entry.total_seconds += seconds
        entry.seconds.append(seconds)
        if seq is not None:
            self._arrivals.append((seq, key, arrived_ns))

    def arrivals(self) -> np.ndarray:
        """This rank's arrivals as an array to exchange: row 0 sequence numbers, row 1
        wall-clock ns, :data:`SAMPLES` columns, unused ones -1."""
        out = np.full((2, SAMPLES), -1, np.int64)
        for i, (seq, _key, ns) in enumerate(self._arrivals):
            out[0, i], out[1, i] = seq, ns
        return out

    def add_everyones_arrivals(self, everyone: np.ndarray) -> None:
        """Tally stragglers from every rank's :meth:`arrivals` (shape ``(size, 2, SAMPLES)``):
        per collective all ranks saw, who began it last and how far apart they began."""
        when: dict[int, np.ndarray] = {}
        for rank in range(self.size):
            for seq, ns in zip(*everyone[rank].tolist(), strict=True):
                if seq >= 0:
                    when.setdefault(seq, np.full(self.size, -1, np.int64))[rank] = ns
        for seq, key, _ns in self._arrivals:
            times = when.get(seq)
            if times is None or (times < 0).any():
                continue  # an older collective some rank no longer remembers
            tally = self._stragglers.setdefault(key, _Stragglers())
            tally.ops += 1
            tally.last[int(times.argmax())] += 1
            tally.spread_ns += int(times.max() - times.min())

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (operation, size bucket): count, bytes, mean/p50/p99 time in
        microseconds, algbw and busbw in GB/s (bytes per second of operation time)."""
        out = []
        for (name, size_bucket), e in sorted(self._entries.items()):
            times = sorted(e.seconds)
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
            algbw = e.nbytes / e.total_seconds / 1e9 if e.total_seconds > 0 else 0.0
            factor = _BUS.get(name, lambda n: 1.0)(self.size) if self.size > 1 else 1.0
            row = {
                "op": name,
                "bucket_bytes": size_bucket,
                "count": e.count,
                "bytes": e.nbytes,
                "mean_us": e.total_seconds / e.count * 1e6,
                "p50_us": statistics.median(times) * 1e6,
                "p99_us": p99 * 1e6,
                "algbw_gbs": algbw,
                "busbw_gbs": algbw * factor,
                "last_rank": None,
                "last_share": None,
                "spread_us": None,
            }
            tally = self._stragglers.get((name, size_bucket))
            if tally is not None and tally.ops:
                last, times_last = tally.last.most_common(1)[0]
                row["last_rank"] = last
                row["last_share"] = times_last / tally.ops
                row["spread_us"] = tally.spread_ns / tally.ops / 1e3
            out.append(row)
        return out

    def table(self, title: str) -> str:
        """The rows as a text table (what ``RINGCOMM_STATS=1`` prints at close)."""
        head = (
            f"# {title}\n# {'op':<15} {'size <=':>10} {'count':>8} {'bytes':>14} "
            f"{'mean_us':>10} {'p50_us':>10} {'p99_us':>10} {'algbw':>7} {'busbw':>7} "
            f"{'last':>10} {'spread_us':>10}"
        )
        lines = [head]
        for r in self.rows():
            last, spread = "-", "-"
            if r["last_rank"] is not None:
                last = f"{r['last_rank']} ({r['last_share']:.0%})"
                spread = f"{r['spread_us']:.1f}"
            lines.append(
                f"  {r['op']:<15} {r['bucket_bytes']:>10} {r['count']:>8} {r['bytes']:>14} "
                f"{r['mean_us']:>10.1f} {r['p50_us']:>10.1f} {r['p99_us']:>10.1f} "
                f"{r['algbw_gbs']:>7.3f} {r['busbw_gbs']:>7.3f} {last:>10} {spread:>10}"
            )
        return "\n".join(lines)


def print_table(stats: Stats, title: str) -> None:
    sys.stderr.write(stats.table(title) + "\n")
    sys.stderr.flush()
