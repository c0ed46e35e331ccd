"""Median over launches of ``bench/collectives.py --csv`` rows: one line per op and size with
ringcomm's time in its natural form, each peer's time, and their ratio (above 1: ringcomm
faster). The machine's speed drifts between launches, so tables are medians of several
launches that alternate with each other.

    python bench/csv_median.py runs/*.csv
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict

IN_PLACE_NATURAL = ("all_reduce", "broadcast", "reduce")


def main(paths: list[str]) -> int:
    times: dict[tuple[str, int, int], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    peers: list[str] = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                key = (row["op"], int(row["ranks"]), int(row["size"]))
                form = "ip" if row["op"] in IN_PLACE_NATURAL else "oop"
                times[key]["ringcomm"].append(float(row[f"{form}_time_us"]))
                for col, value in row.items():
                    if col.endswith("_time_us") and col[:-8] not in ("ip", "oop") and value:
                        name = col[:-8]
                        times[key][name].append(float(value))
                        if name not in peers:
                            peers.append(name)
    print(f"{'op':>15} {'n':>2} {'bytes':>10} {'launches':>8} {'ringcomm_us':>12}", end="")
    for p in peers:
        print(f" {p + '_us':>10} {'ratio':>6}", end="")
    print()
    for (op, n, size), figs in sorted(times.items()):
        ours = statistics.median(figs["ringcomm"])
        print(f"{op:>15} {n:>2} {size:>10} {len(figs['ringcomm']):>8} {ours:12.1f}", end="")
        for p in peers:
            if figs.get(p):
                theirs = statistics.median(figs[p])
                print(f" {theirs:10.1f} {theirs / ours:6.2f}", end="")
            else:
                print(f" {'n/a':>10} {'':>6}", end="")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
