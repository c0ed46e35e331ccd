"""Per-operation statistics (``RINGCOMM_STATS=1``): what each communicator ran, by operation
and size, with times and bandwidths, as DeepSpeed's communication logger reports them.

Off by default, and then nothing is measured (the communicator holds no :class:`Stats`). On,
each finished operation costs one clock read more and one dictionary update; the last
:data:`SAMPLES` durations per (operation, size) feed the percentiles.
"""

from __future__ import annotations

import collections
import statistics
import sys
from typing import Any

SAMPLES = 4096  # durations kept per (operation, size bucket) for the percentiles

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


class Stats:
    """Counts, bytes and times of one communicator's finished operations."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[tuple[str, int], _Entry] = {}

    def add(self, name: str, nbytes: int, seconds: float) -> None:
        """Record one finished operation of ``nbytes`` (its largest buffer) that took
        ``seconds``."""
        key = (name, bucket(nbytes))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.count += 1
        entry.nbytes += nbytes
        entry.total_seconds += seconds
        entry.seconds.append(seconds)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (operation, size bucket): count, bytes, mean/p50/p99 time in
        microseconds, algbw and busbw in GB/s (bytes per second of operation time)."""
        out = []
        for (name, size_bucket), e in sorted(self._entries.items()):
            times = sorted(e.seconds)
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
            algbw = e.nbytes / e.total_seconds / 1e9 if e.total_seconds > 0 else 0.0
            factor = _BUS.get(name, lambda n: 1.0)(self.size) if self.size > 1 else 1.0
            out.append(
                {
                    "op": name,
                    "bucket_bytes": size_bucket,
                    "count": e.count,
                    "bytes": e.nbytes,
                    "mean_us": e.total_seconds / e.count * 1e6,
                    "p50_us": statistics.median(times) * 1e6,
                    "p99_us": p99 * 1e6,
                    "algbw_gbs": algbw,
                    "busbw_gbs": algbw * factor,
                }
            )
        return out

    def table(self, title: str) -> str:
        """The rows as a text table (what ``RINGCOMM_STATS=1`` prints at close)."""
        head = (
            f"# {title}\n# {'op':<15} {'size <=':>10} {'count':>8} {'bytes':>14} "
            f"{'mean_us':>10} {'p50_us':>10} {'p99_us':>10} {'algbw':>7} {'busbw':>7}"
        )
        lines = [head]
        for r in self.rows():
            lines.append(
                f"  {r['op']:<15} {r['bucket_bytes']:>10} {r['count']:>8} {r['bytes']:>14} "
                f"{r['mean_us']:>10.1f} {r['p50_us']:>10.1f} {r['p99_us']:>10.1f} "
                f"{r['algbw_gbs']:>7.3f} {r['busbw_gbs']:>7.3f}"
            )
        return "\n".join(lines)


def print_table(stats: Stats, title: str) -> None:
    sys.stderr.write(stats.table(title) + "\n")
    sys.stderr.flush()
