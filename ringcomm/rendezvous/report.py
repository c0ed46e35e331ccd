"""The init report: with ``RINGCOMM_LOG_LEVEL=INFO`` (or DEBUG), rank 0 logs one block once
the world has formed, as ``NCCL_DEBUG=INFO`` does: world size and hosts, how each pair of
ranks talks, segment and slot sizes, algorithm thresholds, and the secret and encryption
state (never the secret). It is built from the endpoint addresses every rank already has
after the rendezvous: no message more is sent.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Sequence

from ringcomm.algorithms.choice import (
    BINOMIAL_BROADCAST_BELOW_BYTES,
    RECURSIVE_DOUBLING_BELOW_BYTES,
)
from ringcomm.config import Config, WorldSpec
from ringcomm.logs import get_logger

log = get_logger("ringcomm")

# Up to this many ranks every pair is listed; above it, how many pairs use what.
_LIST_PAIRS_UP_TO = 8


def _size(nbytes: int) -> str:
    if nbytes >= 1 << 20 and nbytes % (1 << 20) == 0:
        return f"{nbytes >> 20} MiB"
    if nbytes >= 1 << 10 and nbytes % (1 << 10) == 0:
        return f"{nbytes >> 10} KiB"
    return f"{nbytes} B"


def _sockets(raw: bytes) -> dict[str, str] | None:
    """A rank's ZeroMQ address record (host, tcp, ipc), from a zmq or shm endpoint."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None  # a local (thread) endpoint
    if "zmq" in record:
        return json.loads(record["zmq"])
    return record


def _shm_identity(raw: bytes) -> str | None:
    try:
        return json.loads(raw).get("shm")
    except (ValueError, AttributeError):
        return None


def describe_pairs(
    addresses: Sequence[bytes], transport: str, encrypt: bool
) -> tuple[dict[str, list[int]], dict[tuple[int, int], str]]:
    """``(ranks by host, how each pair i < j talks)`` from the endpoint addresses."""
    size = len(addresses)
    socks = [_sockets(a) for a in addresses]
    shm = [_shm_identity(a) if transport in ("auto", "shm") else None for a in addresses]
    by_host: dict[str, list[int]] = collections.defaultdict(list)
    for r, s in enumerate(socks):
        by_host[s["host"].split("/")[0] if s else "this process"].append(r)
    pairs = {}
    for i in range(size):
        for j in range(i + 1, size):
            si, sj = socks[i], socks[j]
            if si is None or sj is None:
                how = "threads (queues)"
            elif shm[i] is not None and shm[i] == shm[j]:
                how = "shm"
            elif si["host"] == sj["host"] and "ipc" in sj:
                how = "ipc" + (" curve" if encrypt else "")
            else:
                how = f"tcp {sj.get('tcp', '?').removeprefix('tcp://')}"
                how += " curve" if encrypt else ""
            pairs[(i, j)] = how
    return by_host, pairs


def init_report(
    spec: WorldSpec, config: Config, addresses: Sequence[bytes] | None, transport_name: str
) -> str:
    """The report's text (``addresses``: every rank's endpoint address, or None where the
    world is MPI's own)."""
    lines = []
    if addresses is None:
        by_host: dict[str, list[int]] = {}
        pairs = {(i, j): "mpi" for i in range(spec.size) for j in range(i + 1, spec.size)}
    else:
        by_host, pairs = describe_pairs(addresses, spec.transport, config.encrypt)
    if addresses is None:
        secret = "no sockets (MPI moves everything)"
    elif config.secret:
        secret = "job secret set, " + ("CurveZMQ encryption" if config.encrypt else "PLAIN, clear")
    else:
        secret = "no job secret: sockets accept anyone who reaches them"
    hosts_text = f" on {len(by_host)} host(s)" if by_host else ""
    lines.append(
        f"ringcomm init: {spec.size} ranks{hosts_text}, transport {transport_name} "
        f"(asked: {spec.transport}), {secret}"
    )
    if by_host:
        lines.append(
            "  hosts: "
            + "; ".join(f"{h}: ranks {','.join(map(str, rs))}" for h, rs in by_host.items())
        )
    if spec.size <= _LIST_PAIRS_UP_TO:
        lines.append("  pairs: " + "; ".join(f"{i}-{j} {how}" for (i, j), how in pairs.items()))
    else:
        kinds = collections.Counter(how.split(" ")[0] for how in pairs.values())
        lines.append("  pairs: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    lines.append(
        f"  segment {_size(config.segment_bytes)}, zero-copy from "
        f"{_size(config.zero_copy_bytes)}, socket window {_size(config.socket_window_bytes)}, "
        f"shm slots {config.shm_slots} x {_size(config.shm_slot_bytes)}, by address from "
        f"{_size(config.shm_by_address_bytes)}"
    )
    allreduce = config.allreduce_algorithm or (
        "the shared-memory board for small and mid sizes where every rank shares a host "
        f"(see ringcomm.algorithms.choice), else recursive doubling below "
        f"{_size(config.small_message_bytes)} (on more than two ranks below "
        f"{_size(RECURSIVE_DOUBLING_BELOW_BYTES)}, then Rabenseifner's on a power of two of "
        "ranks), ring from there"
    )
    broadcast = config.broadcast_algorithm or (
        "the board where it measured faster, else "
        f"binomial below {_size(BINOMIAL_BROADCAST_BELOW_BYTES)} (or n <= 2), chain from there"
    )
    lines.append(f"  all_reduce: {allreduce}; broadcast: {broadcast}")
    if len(by_host) > 1:
        lines.append("  topology: " + _topology_text(by_host, config))
    lines.append(
        f"  timeout {config.timeout_seconds:g} s, close timeout {config.close_timeout_seconds:g} s"
    )
    return "\n".join(lines)


def _topology_text(by_host: dict[str, list[int]], config: Config) -> str:
    """What the collectives make of the hosts (as choice.use_hierarchy decides it)."""
    sizes = [len(ranks) for ranks in by_host.values()]
    shape = " + ".join(map(str, sizes)) + " ranks"
    if config.hierarchy == "off":
        how = "flat (RINGCOMM_HIERARCHY=off)"
    elif len(set(sizes)) > 1:
        how = "flat (hosts with unequal numbers of ranks)"
    elif sizes[0] == 1:
        how = "flat (one rank per host)"
    else:
        how = "all_reduce, all_gather and reduce_scatter hierarchical (inside hosts, then across)"
    placed = [r for ranks in by_host.values() for r in ranks]
    order = "in rank order"
    if placed != sorted(placed) and config.ring_order == "hosts":
        order = "host by host"
    return f"{shape}; {how}; flat algorithms go {order}"


def log_init_report(
    spec: WorldSpec, config: Config, addresses: Sequence[bytes] | None, transport_name: str
) -> None:
    """Rank 0 logs :func:`init_report` at INFO (nothing is built otherwise)."""
    if spec.rank == 0 and log.isEnabledFor(logging.INFO):
        log.info("%s", init_report(spec, config, addresses, transport_name))
