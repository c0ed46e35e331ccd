"""``python -m ringcomm.trace DIR``: merge the flight recorders the ranks wrote on a failure
(``RINGCOMM_FLIGHT_RECORDER_DIR``) and say which rank is behind, and on which operation.

For each communicator it lists every rank's last operation (its number, state, and the
rank it waited for), then names the culprit: a rank that wrote nothing or never started the
newest operation, found by following "waiting for" from the ranks that failed; and ranks
that ran different operations under one number.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Any


def load(directory: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Every ``ringcomm-<comm>-rank<R>.json`` in ``directory``, by communicator and rank."""
    found: dict[str, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    for name in sorted(os.listdir(directory)):
        if name.startswith("ringcomm-") and name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                record = json.load(f)
            found[record["comm"]][record["rank"]] = record
    return found


def _last(record: dict[str, Any]) -> dict[str, Any] | None:
    ops = record["operations"]
    return max(ops, key=lambda op: op["seq"]) if ops else None


def analyse(comm: str, records: dict[int, dict[str, Any]]) -> list[str]:
    """The lines said about one communicator."""
    size = max(r["size"] for r in records.values())
    missing = [r for r in range(size) if r not in records]
    lines = [
        f"communicator {comm}, {size} ranks: records from ranks {sorted(records)}"
        + (f"; none from ranks {missing}" if missing else "")
    ]
    last = {r: _last(rec) for r, rec in sorted(records.items())}
    for r, op in last.items():
        if op is None:
            lines.append(f"  rank {r}: no operation recorded")
            continue
        waiting = records[r]["waiting_for"]
        error = f" ({op['error'][:160]})" if op["error"] else ""
        lines.append(
            f"  rank {r}: {op['op']} #{op['seq']} {op['state']} after {op['seconds']:.2f} s"
            + (f", waiting for rank {waiting}" if waiting is not None else "")
            + error
        )
    newest = max((op["seq"] for op in last.values() if op), default=0)
    behind = [r for r, op in last.items() if op is None or op["seq"] < newest]
    names_at_newest = collections.defaultdict(list)
    for r, op in last.items():
        if op is not None and op["seq"] == newest:
            names_at_newest[op["op"]].append(r)
    if len(names_at_newest) > 1:
        said = "; ".join(f"ranks {rs}: {name}" for name, rs in names_at_newest.items())
        lines.append(f"=> ranks disagree on operation #{newest}: {said}")
    # Follow "waiting for" from every rank that waited: where it ends is who holds them up.
    culprits: set[int] = set()
    for start in last:
        seen, r = set(), start
        while r in records and records[r]["waiting_for"] is not None and r not in seen:
            seen.add(r)
            r = records[r]["waiting_for"]
        if r != start and (r in missing or r in behind or r not in records):
            culprits.add(r)
    culprits |= set(missing) & {records[r]["waiting_for"] for r in records}
    newest_name = next(iter(names_at_newest), "?")
    for r in sorted(culprits | set(behind)):
        waiters = sorted(w for w in records if records[w]["waiting_for"] == r)
        how = (
            "wrote no record (stuck, dead, or never failed)"
            if r in missing
            else (
                f"never started #{newest}, its last is #{last[r]['seq']}"
                if last.get(r)
                else "is idle"
            )
        )
        lines.append(
            f"=> rank {r} is behind on {newest_name} #{newest}: it {how}"
            + (f"; ranks {waiters} wait for it" if waiters else "")
        )
    if not culprits and not behind and len(names_at_newest) <= 1:
        lines.append(f"=> every rank with a record reached {newest_name} #{newest}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ringcomm.trace``."""
    parser = argparse.ArgumentParser(
        prog="python -m ringcomm.trace", description=__doc__.split("\n")[0]
    )
    parser.add_argument("directory", help="RINGCOMM_FLIGHT_RECORDER_DIR of the failed job")
    args = parser.parse_args(argv)
    comms = load(args.directory)
    if not comms:
        print(f"no flight recorder files in {args.directory}")
        return 1
    for comm, records in comms.items():
        print("\n".join(analyse(comm, records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
