"""Algorithms: pure schedules plus thin drivers over a transport, and the choice between them.

Choice by size (measured on a 2-core machine, 2-4 ranks over ZeroMQ ipc://, float32; see
``bench/collectives.py`` and the README):

- all_reduce below ``Config.small_message_bytes`` (64 KiB) uses recursive doubling: it pays
  log2(n) message latencies where the ring pays 2(n-1), and below that size latency
  dominates. From there up the ring wins: it moves 2(n-1)/n of the buffer per rank instead
  of log2(n) whole buffers. A 2-rank world exchanges once either way.
- broadcast below ``small_message_bytes`` uses the binomial tree (log2 n rounds), above it
  the pipelined chain (link speed once the pipeline is full).
- star is never chosen automatically; it is there to be compared.
"""

from __future__ import annotations

from ringcomm.config import ALLREDUCE_ALGORITHMS, BROADCAST_ALGORITHMS, Config


def choose_allreduce(nbytes: int, size: int, config: Config, requested: str | None) -> str:
    """Name of the all_reduce algorithm: ``requested``, else the config's, else by size."""
    name = requested or config.allreduce_algorithm
    if name is not None:
        if name not in ALLREDUCE_ALGORITHMS:
            raise ValueError(
                f"unknown all_reduce algorithm {name!r}: expected one of "
                f"{', '.join(ALLREDUCE_ALGORITHMS)}"
            )
        return name
    return "recursive_doubling" if nbytes < config.small_message_bytes else "ring"


def choose_broadcast(nbytes: int, size: int, config: Config, requested: str | None) -> str:
    """Name of the broadcast algorithm: ``requested``, else the config's, else by size."""
    name = requested or config.broadcast_algorithm
    if name is not None:
        if name not in BROADCAST_ALGORITHMS:
            raise ValueError(
                f"unknown broadcast algorithm {name!r}: expected one of "
                f"{', '.join(BROADCAST_ALGORITHMS)}"
            )
        return name
    return "binomial" if nbytes < config.small_message_bytes or size <= 2 else "chain"
